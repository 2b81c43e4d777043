from django.shortcuts import get_object_or_404, render

from project.questions.models import Question


def question_list(request):
    return render(request, "questions/list.html", {"questions": Question.objects.all()[:50]})


def question_detail(request, pk):
    question = get_object_or_404(Question, pk=pk)
    return render(request, "questions/detail.html", {"question": question})
