"""The demo site's pages: search by keywords and meaning, similar questions, "did you mean…?",
categories suggested on Ask, and the admin's category column and filter."""

import io
import re

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse
from django.utils.html import escape

from project.questions.management.commands.load_demo_data import read_questions
from project.questions.models import Question
from project.questions.views import SEARCH_UNAVAILABLE
from semantic import embed_pending

pytestmark = pytest.mark.django_db(transaction=True)


def test_search_by_meaning_orders_by_similarity(client, questions):
    response = client.get(reverse("questions:list"), {"q": "password reset"})
    assert response.status_code == 200
    page = list(response.context["page"])
    assert {q.title for q in page[:2]} == {"How do I reset my password", "Reset forgotten password"}
    assert page[0].similarity >= page[-1].similarity
    assert "Best matches for “password reset”" in response.content.decode()


def test_list_without_query_shows_everything(client, questions):
    response = client.get(reverse("questions:list"))
    assert len(response.context["page"]) == 3


def test_asking_a_duplicate_gets_did_you_mean_first(client, questions):
    data = {"title": "How do I reset my password", "body": "I forgot my password"}
    response = client.post(reverse("questions:ask"), data)
    assert response.status_code == 200
    assert [q.title for q in response.context["duplicates"]] == ["How do I reset my password"]
    assert "Did you mean" in response.content.decode()
    assert Question.objects.count() == 3

    response = client.post(reverse("questions:ask"), {**data, "category": "account", "confirm": "1"})
    assert response.status_code == 302
    assert Question.objects.count() == 4


def buttons(response) -> list[dict[str, str]]:
    """The submit buttons of the page's post form (not the header's search), each as the data pressing it adds."""
    form = re.search(r'<form method="post">(.*?)</form>', response.content.decode(), re.S)[1]
    pressed = []
    for attributes in re.findall(r"<button([^>]*)>", form):
        name, value = re.search(r'name="([^"]*)"', attributes), re.search(r'value="([^"]*)"', attributes)
        pressed.append({name[1]: value[1] if value else ""} if name else {})
    return pressed


def test_every_button_beside_did_you_mean_posts_the_question(client, questions):
    """Whichever button the user presses once "Did you mean…?" is shown, the question is posted:
    the page offers no button that shows the same page again (browser review F3)."""
    data = {"title": "How do I reset my password", "body": "I forgot my password"}
    response = client.post(reverse("questions:ask"), data)
    assert response.context["duplicates"]
    offered = buttons(response)
    assert offered
    for pressed in offered:
        before = Question.objects.count()
        response = client.post(reverse("questions:ask"), {**data, "category": "account", **pressed})
        assert response.status_code == 302, pressed
        assert Question.objects.count() == before + 1


def test_asking_something_new_asks_for_its_category_then_posts_it(client, questions):
    data = {"title": "Dark mode for the dashboard", "body": ""}
    response = client.post(reverse("questions:ask"), data)
    assert response.status_code == 200
    assert response.context["choosing"]
    assert not Question.objects.filter(title="Dark mode for the dashboard").exists()

    response = client.post(reverse("questions:ask"), {**data, "category": "settings"})
    assert response.status_code == 302
    new = Question.objects.get(title="Dark mode for the dashboard")
    assert new.category == "settings"
    assert new.embedding is not None  # SYNC in tests: embedded on commit


@pytest.mark.parametrize("q", ["\x01", " \x01\x02 ", "   "])
def test_a_query_with_nothing_to_embed_lists_everything(client, questions, q):
    response = client.get(reverse("questions:list"), {"q": q})
    assert response.status_code == 200
    assert len(response.context["page"]) == 3
    assert "All questions" in response.content.decode()


def test_search_when_the_api_fails_says_so_instead_of_an_error(client, questions, fake_gemini):
    fake_gemini.fail_next(503, times=5)
    response = client.get(reverse("questions:list"), {"q": "password reset"})
    assert response.status_code == 200
    assert SEARCH_UNAVAILABLE in response.content.decode()
    assert len(response.context["page"]) == 3


def test_search_when_only_the_passages_query_fails_shows_the_results_without_passages(client, questions, fake_gemini):
    """With Gemini the answers' passages need a second query vector (RETRIEVAL_QUERY): when
    the API fails after the question's, the results still come, without passages."""

    def fail_after_the_questions_query(record):
        if record["body"]["requests"][0].get("taskType") == "SEMANTIC_SIMILARITY":
            fake_gemini.fail_next(503, times=20)

    fake_gemini.on_request = fail_after_the_questions_query
    response = client.get(reverse("questions:list"), {"q": "password reset"})
    assert response.status_code == 200
    asked = [
        (r["body"]["requests"][0].get("taskType"), r["status"])
        for r in fake_gemini.requests
        if r["body"]["requests"][0]["content"]["parts"][0]["text"] == "password reset"
    ]
    assert asked == [("SEMANTIC_SIMILARITY", 200), ("RETRIEVAL_QUERY", 503)]
    assert SEARCH_UNAVAILABLE not in response.content.decode()
    assert titles(response)[:2] == ["How do I reset my password", "Reset forgotten password"]


def test_asking_when_the_api_fails_still_posts_the_question(client, questions, fake_gemini):
    fake_gemini.fail_next(429, times=20)
    data = {"title": "How do I reset my password", "body": "again"}
    response = client.post(reverse("questions:ask"), data)
    assert response.status_code == 200
    assert response.context["suggestion"] is None
    assert "No suggestion right now" in response.content.decode()

    response = client.post(reverse("questions:ask"), {**data, "category": ""})
    assert response.status_code == 302
    assert Question.objects.get(body="again").category == ""


def test_no_suggestion_when_no_labelled_question_is_similar_at_all(client, fake_gemini):
    """Labelled questions at similarity 0 or below: Ask and the question's page offer no category."""
    import numpy as np

    from semantic import suspend_embedding
    from tests.fake_gemini import fake_vector

    spec = Question._meta.get_field("embedding").spec()
    text = np.array(fake_vector("xyzzy plugh", 384))
    text /= np.linalg.norm(text)
    orthogonal = np.zeros(384)
    orthogonal[int(np.flatnonzero(text == 0)[0])] = 1.0
    cache.clear()
    with suspend_embedding():
        for title, vector in [("Opposite", -text), ("Unrelated", orthogonal)]:
            Question.objects.create(title=title, category="billing", embedding=vector.tolist(), embedding_spec=spec)
        waiting = Question.objects.create(title="xyzzy plugh", embedding=text.tolist(), embedding_spec=spec)

    response = client.post(reverse("questions:ask"), {"title": "xyzzy plugh", "body": ""})
    assert response.status_code == 200
    assert response.context["suggestion"] is None
    assert "No suggestion right now" in response.content.decode()
    response = client.get(waiting.get_absolute_url())
    assert response.status_code == 200
    assert response.context["suggestion"] is None


def searches_with(settings, **limits):
    settings.DEMO_THRESHOLDS = {"gemini": limits}


def test_a_query_below_the_minimum_similarity_says_no_good_match(client, questions, settings):
    searches_with(settings, min_similarity=0.3)
    response = client.get(reverse("questions:list"), {"q": "zebra quantum harmonica"})
    body = response.content.decode()
    assert len(response.context["page"]) == 0
    assert "No good match" in body
    assert 'href="/"' in body  # offers all questions

    response = client.get(reverse("questions:list"), {"q": "password reset"})
    assert {q.title for q in response.context["page"]} == {"How do I reset my password", "Reset forgotten password"}
    assert "No good match" not in response.content.decode()


def test_scores_come_with_a_word_and_a_bar(client, questions, settings):
    searches_with(settings, min_similarity=0.1, did_you_mean=0.6)
    response = client.get(reverse("questions:list"), {"q": "How do I reset my password I forgot my password"})
    first = response.context["page"][0]
    assert first.title == "How do I reset my password"
    assert first.strength == "very close"
    assert first.percent == round(first.similarity * 100)
    body = response.content.decode()
    assert 'class="match very-close"' in body
    assert f'style="width:{first.percent}%"' in body


def test_numbering_continues_on_the_next_page(client, fake_gemini):
    Question.objects.bulk_create(Question(title=f"Question about topic {i}", body="") for i in range(25))
    response = client.get(reverse("questions:list"), {"page": 2})
    assert response.context["page"].start_index() == 21
    assert '<ol class="results" start="21">' in response.content.decode()


def test_with_gemini_no_english_only_note(client, questions):
    response = client.get(reverse("questions:list"), {"q": "¿Cómo cambio mi contraseña?"})
    assert not response.context["english_only"]


@pytest.fixture
def local_model(semantic_settings):
    cache.clear()
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend", CACHE=None)


def test_with_the_local_model_a_non_english_query_gets_a_note(client, local_model):
    from project.questions.views import ENGLISH_ONLY

    for query in ("¿Cómo cambio mi contraseña?", "Wie kann ich mein Passwort ändern", "comment je peux payer"):
        response = client.get(reverse("questions:list"), {"q": query})
        assert response.context["english_only"], query
        assert ENGLISH_ONLY in response.content.decode()
    for query in ("How do I change my password", "no email notifications", "2FA"):
        response = client.get(reverse("questions:list"), {"q": query})
        assert not response.context["english_only"], query


def test_with_the_local_model_did_you_mean_catches_a_short_paraphrase(client, local_model):
    """The measured did-you-mean threshold (0.53) catches what 0.75 let through (issue 12)."""
    Question.objects.bulk_create(
        [
            Question(
                title="Why am I being charged twice this month?", body="My statement shows two identical payments."
            ),
            Question(title="How do I export my invoices as CSV?", body="Our accountant needs a spreadsheet."),
        ]
    )
    embed_pending()
    response = client.post(reverse("questions:ask"), {"title": "I was charged two times", "body": ""})
    assert response.status_code == 200
    assert [q.title for q in response.context["duplicates"]] == ["Why am I being charged twice this month?"]
    assert Question.objects.count() == 2


def test_a_search_pages_on_with_its_numbering(client, fake_gemini, settings):
    searches_with(settings, min_similarity=None)
    Question.objects.bulk_create(Question(title=f"Question about topic {i}", body="") for i in range(25))
    embed_pending()
    response = client.get(reverse("questions:list"), {"q": "topic", "page": 2})
    page = response.context["page"]
    assert (page.start_index(), len(page), page.paginator.count) == (21, 5, 25)
    body = response.content.decode()
    assert '<ol class="results" start="21">' in body
    assert 'href="?q=topic&page=1"' in body


# The demo's own sample data (questions, answers, categories) with the local model, as `make demo` runs it.


@pytest.fixture
def demo_board(local_model):
    call_command("load_demo_data", stdout=io.StringIO())
    embed_pending()
    assert not Question.objects.filter(embedding__isnull=True).exists()


def test_the_sample_data_has_long_answers_and_mostly_labelled_questions():
    """Every answer is several paragraphs, longer than the local model reads whole (about 900 characters)."""
    questions = read_questions()
    assert len(questions) == 70
    assert all(q.answer.count("\n\n") >= 3 and len(q.answer) > 900 for q in questions)
    unlabelled = [q.title for q in questions if not q.category]
    assert 3 <= len(unlabelled) <= 10
    assert {q.category for q in questions} - {""} == {c for c, _ in Question._meta.get_field("category").choices}


def test_ask_suggests_the_category_of_a_question_clearly_in_one(client, demo_board):
    """Measured with the local model: billing with 0.85 of the five nearest labelled questions' vote;
    the nearest question (0.46) is below "did you mean" (0.53), so it is posted on the second step."""
    data = {"title": "The VAT number is missing on my invoices", "body": "Our accountant needs it on every invoice."}
    response = client.post(reverse("questions:ask"), data)
    suggestion = response.context["suggestion"]
    assert (suggestion.category, suggestion.name) == ("billing", "Billing and payments")
    assert suggestion.confidence >= 0.8
    body = response.content.decode()
    assert '<option value="billing" selected>Billing and payments</option>' in body
    assert f"{suggestion.percent}% sure" in body
    assert Question.objects.count() == 70

    response = client.post(reverse("questions:ask"), {**data, "category": "billing"})
    assert response.status_code == 302
    assert Question.objects.get(title="The VAT number is missing on my invoices").category == "billing"


def test_the_user_can_change_the_suggested_category(client, demo_board):
    data = {"title": "The VAT number is missing on my invoices", "body": "Our accountant needs it on every invoice."}
    assert client.post(reverse("questions:ask"), data).context["suggestion"].category == "billing"
    client.post(reverse("questions:ask"), {**data, "category": "data"})
    assert Question.objects.get(title="The VAT number is missing on my invoices").category == "data"


def test_a_question_page_shows_its_category_or_a_suggestion(client, demo_board):
    labelled = Question.objects.get(title="How do I export my invoices as CSV?")
    body = client.get(labelled.get_absolute_url()).content.decode()
    assert "Category: <strong>Billing and payments</strong>" in body
    assert escape(labelled.answer.split("\n\n")[0]) in body

    unlabelled = Question.objects.get(title="Is there a way to download all invoices at once?")
    assert unlabelled.category == ""
    response = client.get(unlabelled.get_absolute_url())
    assert response.context["suggestion"].category == "billing"
    assert "No category yet; suggested: <strong>Billing and payments</strong>" in response.content.decode()


def titles(response):
    return [q.title for q in response.context["page"]]


def test_search_ranks_keyword_matches_that_meaning_alone_ranks_lower(client, demo_board):
    """Measured on the demo data with the local model (docs/benchmarks.md has the table).

    "429": by meaning alone the nearest question is about workspace sizes (0.23) and both
    questions about 429 responses are below the 0.48 floor, so the search said "No good
    match"; they hold the word, and now come first. "report": by meaning, the slow page
    (0.32) ranks above scheduling a report (0.27); the scheduling question has the word
    in its title and now ranks above it.
    """
    by_meaning = list(Question.objects.similar_to("429", field="embedding").values_list("title", "similarity"))
    assert by_meaning[0][0] == "How many people can join a workspace?"
    assert all(similarity < 0.48 for _, similarity in by_meaning)
    response = client.get(reverse("questions:list"), {"q": "429"})
    assert set(titles(response)) == {"My API requests return 429 Too Many Requests", "What are the API rate limits?"}
    assert "No good match" not in response.content.decode()

    scheduled, slow = "Can I schedule a report to be emailed weekly?", "The page is very slow to load"
    by_meaning = list(Question.objects.similar_to("report", field="embedding").values_list("title", flat=True))
    assert by_meaning.index(slow) < by_meaning.index(scheduled)
    shown = titles(client.get(reverse("questions:list"), {"q": "report"}))
    assert shown.index(scheduled) < shown.index(slow)


def test_search_shows_the_part_of_each_answer_nearest_to_the_query(client, demo_board):
    """The answers are cut into passages (longer than the local model reads) and each result
    shows its answer's passage nearest to the query: here not the answer's first."""
    from semantic.models import Passage

    passages = Passage.objects.filter(model_label="questions.Question", field_name="answer_embedding")
    assert set(passages.values_list("object_pk", flat=True)) == {
        str(pk) for pk in Question.objects.values_list("pk", flat=True)
    }
    assert passages.count() > 2 * Question.objects.count()

    response = client.get(reverse("questions:list"), {"q": "export invoices csv"})
    first = response.context["page"][0]
    assert first.title == "How do I export my invoices as CSV?"
    assert first.passage_position > 0
    assert first.answer[first.passage_start : first.passage_end] == first.passage_text
    assert "one invoice per row" in first.passage_text
    shown = response.content.decode()
    assert "From the answer:" in shown and escape(" ".join(first.passage_text.split()[:8])) in shown
    assert '<p class="passage">' in shown  # no hover-only title: what a passage is, the page says


def test_nonsense_finds_no_good_match_on_the_demo_board_despite_long_answers(client, demo_board):
    response = client.get(reverse("questions:list"), {"q": "purple elephants dancing"})
    assert titles(response) == []
    assert "No good match" in response.content.decode()


def test_the_admin_lists_and_filters_questions_by_category(admin_client, demo_board):
    url = reverse("admin:questions_question_changelist")
    body = admin_client.get(url).content.decode()
    assert "column-category" in body
    assert "By category" in body
    shown = admin_client.get(url, {"category__exact": "integrations"}).context["cl"].result_list
    assert {q.title for q in shown} == set(
        Question.objects.filter(category="integrations").values_list("title", flat=True)
    )
    assert len(shown) == 6


def test_every_demo_page_holds_its_content_in_one_main_landmark(client, questions):
    """Screen readers jump to <main>; outside it only the site's header (axe's landmark-one-main
    and region rules), messages included."""
    question = Question.objects.first()
    urls = [reverse("questions:list"), reverse("questions:ask"), question.get_absolute_url()]
    for url in [*urls, f"{urls[0]}?q=reset+password"]:
        page = client.get(url).content.decode()
        assert page.count("<main>") == page.count("</main>") == 1, url
        between, main = re.search(r"</header>(.*?)<main>(.*)</main>\s*</body>", page, re.S).groups()
        assert between.strip() == "" and "<h1>" in main, url
