from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render

from project.questions.forms import QuestionForm
from project.questions.models import Question

#: Similarity from which a new question is shown its likely duplicates first.
DID_YOU_MEAN_THRESHOLD = 0.75


def question_list(request):
    """All questions, or the ones nearest in meaning to ``?q=``."""
    query = request.GET.get("q", "").strip()
    questions = Question.objects.similar_to(query) if query else Question.objects.all()
    page = Paginator(questions, 20).get_page(request.GET.get("page"))
    return render(request, "questions/list.html", {"page": page, "query": query})


def question_detail(request, pk):
    question = get_object_or_404(Question, pk=pk)
    similar = Question.objects.similar_to(question)[:5] if question.embedding is not None else None
    return render(request, "questions/detail.html", {"question": question, "similar": similar})


def ask(request):
    """Ask a question; if it looks like one already asked, say so before saving it."""
    form = QuestionForm(request.POST or None)
    duplicates = []
    if request.method == "POST" and form.is_valid():
        text = f"{form.cleaned_data['title']}\n\n{form.cleaned_data['body']}"
        if "confirm" not in request.POST:
            duplicates = list(Question.objects.duplicates_of(text, DID_YOU_MEAN_THRESHOLD)[:5])
        if not duplicates:
            question = form.save()
            messages.success(request, "Thanks! Your question is posted; similar questions appear in a moment.")
            return redirect(question)
    return render(request, "questions/ask.html", {"form": form, "duplicates": duplicates})
