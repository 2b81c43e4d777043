from django.contrib import messages
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render

from project.questions.categories import suggest, suggest_for
from project.questions.forms import QuestionForm
from project.questions.language import looks_english
from project.questions.models import Question
from project.questions.relevance import describe, thresholds
from project.questions.search import search
from semantic import EmptyQuery, SearchUnavailable
from semantic.backends import get_backend
from semantic.rows import failures
from semantic.text import sanitize

PER_PAGE = 20
SEARCH_UNAVAILABLE = "Search by meaning is unavailable right now; please try again in a minute. Showing all questions."
SIMILAR_UNAVAILABLE = (
    "Similar questions are unavailable right now: comparing this question needs the embedding service, "
    "which cannot answer at the moment."
)
POSTED = "Thanks! Your question is posted; similar questions appear in a moment."
POSTED_WITHOUT_TEXT = "Thanks! Your question is posted; it has no text to compare, so no similar questions will appear."
ENGLISH_ONLY = (
    "This search looks like it is not in English. The local model understands English only, "
    "so it may find nothing related; with GEMINI_API_KEY set, the demo searches in other languages too."
)


def question_list(request):
    """All questions, or those that match ``?q=`` by keywords and meaning (search.py).

    A query with nothing to embed (``?q=%01``) is no query; when the embedding API
    cannot answer, the page says so and lists everything rather than failing. A query
    that nothing is close enough to gets "No good match" rather than a list of noise.
    """
    query = request.GET.get("q", "")
    questions = Question.objects.all()
    unavailable = None
    limits = thresholds()
    try:
        if query:
            questions = search(query, limits.min_similarity)
    except EmptyQuery:
        query = ""
    except SearchUnavailable:
        query, unavailable = "", SEARCH_UNAVAILABLE
    page = Paginator(questions, PER_PAGE).get_page(request.GET.get("page"))
    page.object_list = list(page.object_list)
    if query:
        describe(page.object_list, limits)
    context = {
        "page": page,
        "query": query,
        "unavailable": unavailable,
        "limits": limits,
        "english_only_note": ENGLISH_ONLY,
        "english_only": bool(query) and get_backend().name == "local" and not looks_english(query),
        "embedded": Question.objects.filter(embedding__isnull=False).exists() if query and not page else None,
    }
    return render(request, "questions/list.html", context)


def question_detail(request, pk):
    """A question, its answer and the questions most similar to it.

    A question edited since its vector was made is compared by its text, embedded now;
    when that fails the page says so and offers a link to try again. It must not poll
    for a vector like a new question does: the old vector is there, so the poll would
    reload the page at once, and each reload would ask the failing API again.
    """
    question = get_object_or_404(Question, pk=pk)
    similar = None
    unavailable = None
    if question.embedding is not None:
        try:
            similar = list(Question.objects.similar_to(question, field="embedding")[:5])
        except SearchUnavailable:
            unavailable = SIMILAR_UNAVAILABLE
        else:
            describe(similar, thresholds())
    context = {
        "question": question,
        "similar": similar,
        "unavailable": unavailable,
        "nothing_to_embed": not has_text(question),
        "failed": question.embedding is None and has_failed(question),
        "suggestion": suggest_for(question),
    }
    return render(request, "questions/detail.html", context)


def question_state(request, pk):
    """``{"embedded": bool, "failed": bool}``: what the page of a new question polls until it can
    list similar ones, or say that embedding it failed (the sweep tries it again)."""
    question = get_object_or_404(Question.objects.only("pk", "embedding"), pk=pk)
    embedded = question.embedding is not None
    return JsonResponse({"embedded": embedded, "failed": not embedded and has_failed(question)})


def has_failed(question: Question) -> bool:
    field = Question._meta.get_field("embedding")
    return failures(Question, field).filter(object_pk=str(question.pk)).exists()


def has_text(question: Question) -> bool:
    """Whether the worker will embed the question at all: it blanks control characters
    before it strips (semantic.text), so a title of ``"\\x01\\x02"`` is as empty as ``"  "``."""
    return bool(sanitize(Question._meta.get_field("embedding").source_text(question)).strip())


def ask(request):
    """Ask a question in two steps: the text, then its category; say so first if it was asked before.

    The first post suggests a category from the labelled questions (categories.py)
    and shows it selected, with its confidence; the user accepts or changes it and
    posts again. "Did you mean…?" is a courtesy: when the text cannot be embedded
    now, there is no suggestion either and the question is still posted.
    """
    form = QuestionForm(request.POST or None)
    duplicates = []
    suggestion = None
    if request.method == "POST" and form.is_valid():
        title, body = form.cleaned_data["title"], form.cleaned_data["body"]
        if "confirm" not in request.POST:
            limits = thresholds()
            try:
                duplicates = list(
                    Question.objects.duplicates_of(f"{title}\n\n{body}", limits.did_you_mean, field="embedding")[:5]
                )
            except (EmptyQuery, SearchUnavailable):
                duplicates = []
            describe(duplicates, limits)
        if form.chose_category() and not duplicates:
            question = form.save()
            messages.success(request, POSTED if has_text(question) else POSTED_WITHOUT_TEXT)
            return redirect(question)
        if not form.chose_category():
            suggestion = suggest(title, body)
            form = form.with_category(suggestion.category if suggestion else "")
    context = {"form": form, "duplicates": duplicates, "suggestion": suggestion, "choosing": form.chose_category()}
    return render(request, "questions/ask.html", context)
