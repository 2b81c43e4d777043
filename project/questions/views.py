from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render

from project.questions.forms import QuestionForm
from project.questions.models import Question
from semantic import EmptyQuery, SearchUnavailable

#: Similarity from which a new question is shown its likely duplicates first.
DID_YOU_MEAN_THRESHOLD = 0.75

SEARCH_UNAVAILABLE = "Search by meaning is unavailable right now; please try again in a minute. Showing all questions."
POSTED = "Thanks! Your question is posted; similar questions appear in a moment."


def question_list(request):
    """All questions, or the ones nearest in meaning to ``?q=``.

    A query with nothing to embed (``?q=%01``) is no query; when the embedding API
    cannot answer, the page says so and lists everything rather than failing.
    """
    query = request.GET.get("q", "")
    questions = Question.objects.all()
    unavailable = None
    try:
        if query:
            questions = Question.objects.similar_to(query)
    except EmptyQuery:
        query = ""
    except SearchUnavailable:
        query, unavailable = "", SEARCH_UNAVAILABLE
    page = Paginator(questions, 20).get_page(request.GET.get("page"))
    return render(request, "questions/list.html", {"page": page, "query": query, "unavailable": unavailable})


def question_detail(request, pk):
    question = get_object_or_404(Question, pk=pk)
    similar = None
    if question.embedding is not None:
        try:
            similar = Question.objects.similar_to(question)[:5]
        except SearchUnavailable:
            pass
    return render(request, "questions/detail.html", {"question": question, "similar": similar})


def ask(request):
    """Ask a question; if it looks like one already asked, say so before saving it.

    "Did you mean…?" is a courtesy: when the text cannot be embedded now, the
    question is saved without it.
    """
    form = QuestionForm(request.POST or None)
    duplicates = []
    if request.method == "POST" and form.is_valid():
        text = f"{form.cleaned_data['title']}\n\n{form.cleaned_data['body']}"
        if "confirm" not in request.POST:
            try:
                duplicates = list(Question.objects.duplicates_of(text, DID_YOU_MEAN_THRESHOLD)[:5])
            except (EmptyQuery, SearchUnavailable):
                duplicates = []
        if not duplicates:
            question = form.save()
            messages.success(request, POSTED)
            return redirect(question)
    return render(request, "questions/ask.html", {"form": form, "duplicates": duplicates})
