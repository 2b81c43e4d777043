"""The demo's question page: its similar questions, or why there are none yet: being embedded
(the page polls its state, or says to reload it without JavaScript), embedding failed,
nothing to embed, or the edited text cannot be compared while the embedding API fails."""

import re

import pytest
from django.urls import reverse

from project.questions.models import Question
from project.questions.views import SIMILAR_UNAVAILABLE
from semantic import embed_pending

pytestmark = pytest.mark.django_db(transaction=True)


def test_detail_shows_similar_questions(client, questions):
    question = questions["How do I reset my password"]
    response = client.get(question.get_absolute_url())
    similar = list(response.context["similar"])
    assert similar[0].title == "Reset forgotten password"
    assert question not in similar


def test_detail_of_a_question_not_yet_embedded(client, fake_gemini):
    from semantic import suspend_embedding

    with suspend_embedding():
        question = Question.objects.create(title="Brand new", body="")
    response = client.get(question.get_absolute_url())
    assert response.context["similar"] is None
    assert "being embedded" in response.content.decode()


def test_detail_when_the_question_cannot_be_compared_now(client, questions, fake_gemini):
    question = questions["How do I reset my password"]
    Question.objects.filter(pk=question.pk).update(embedding_spec="gemini:old-model|SEMANTIC_SIMILARITY|384")
    fake_gemini.fail_next(503, times=5)
    response = client.get(question.get_absolute_url())
    assert response.status_code == 200
    assert response.context["similar"] is None
    assert SIMILAR_UNAVAILABLE in response.content.decode()


def open_like_a_browser(client, url, limit=5) -> int:
    """Open ``url`` as the page's script would: poll its state and reload when the script does.
    Returns how many times the page was loaded (at most ``limit``)."""
    loads = 0
    while loads < limit:
        page = client.get(url).content.decode()
        loads += 1
        state = re.search(r'data-state="([^"]+)"', page)
        if not state:
            return loads
        answer = client.get(state[1]).json()
        if not (answer["embedded"] or answer["failed"]):
            return loads
    return loads


def test_an_edited_question_opened_while_the_api_fails_says_so_and_does_not_reload(client, questions, fake_gemini):
    """Its old vector is kept until the worker runs, so its text is embedded to compare it:
    when that fails, the page says so and offers to try again, without reloading itself
    and asking the API on every reload (browser review F10)."""
    question = questions["How do I reset my password"]
    Question.objects.filter(pk=question.pk).update(title="How do I reset my passphrase")
    fake_gemini.fail_every(503, body='{"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}}')
    fake_gemini.requests.clear()

    response = client.get(question.get_absolute_url())
    body = response.content.decode()
    assert response.status_code == 200
    assert SIMILAR_UNAVAILABLE in body
    assert f'href="{question.get_absolute_url()}">Try again</a>' in body
    assert "being embedded" not in body
    one_load = fake_gemini.request_count
    assert one_load >= 1

    fake_gemini.requests.clear()
    assert open_like_a_browser(client, question.get_absolute_url()) == 1
    assert fake_gemini.request_count == one_load


def test_a_question_with_no_text_says_it_has_nothing_to_embed(client, fake_gemini):
    question = Question.objects.create(title="   ", body="")
    response = client.get(question.get_absolute_url())
    body = response.content.decode()
    assert "no text to embed" in body
    assert "being embedded" not in body


@pytest.mark.parametrize("title", ["\x01\x02", " \x1b\x7f\t"])
def test_a_question_of_control_characters_says_it_has_nothing_to_embed(client, fake_gemini, title):
    """The worker counts such a row empty (control characters are blanked, then stripped):
    the page says so instead of waiting for a vector that never comes (browser review F4)."""
    question = Question.objects.create(title=title, body="")
    question.refresh_from_db()
    assert question.embedding is None
    body = client.get(question.get_absolute_url()).content.decode()
    assert "no text to embed" in body
    assert "being embedded" not in body


def test_a_question_being_embedded_tells_readers_without_javascript_to_reload(client, fake_gemini):
    """The page updates itself through a script only; without it, it says to reload (browser review F6)."""
    from semantic import suspend_embedding

    with suspend_embedding():
        question = Question.objects.create(title="Brand new", body="")
    body = client.get(question.get_absolute_url()).content.decode()
    assert "being embedded" in body
    assert re.search(r"<noscript>.*Reload this page.*</noscript>", body, re.S)


def test_a_question_being_embedded_polls_its_state(client, fake_gemini):
    """The waiting text is in a role="status" region; once the state says embedded, the script
    puts the similar questions of a fresh copy of the page (its #similar) there, without a reload."""
    from semantic import suspend_embedding

    with suspend_embedding():
        question = Question.objects.create(title="Brand new", body="")
    state = reverse("questions:state", args=[question.pk])
    page = client.get(question.get_absolute_url()).content.decode()
    region = re.search(r'<div id="similar">\s*<div id="similar-status" role="status">\s*<p ([^>]*)>', page)
    assert region and f'data-state="{state}"' in region[1] and "pending" in region[1]
    assert client.get(state).json() == {"embedded": False, "failed": False}
    embed_pending()
    assert client.get(state).json() == {"embedded": True, "failed": False}
    page = client.get(question.get_absolute_url()).content.decode()
    assert re.search(r'<div id="similar">\s*<ol class="results">', page)


def test_a_question_whose_embedding_failed_says_so_instead_of_waiting(client, fake_gemini):
    fake_gemini.fail_next(500, times=100)
    question = Question.objects.create(title="Brand new", body="while the API fails")  # the worker tried
    state = reverse("questions:state", args=[question.pk])
    assert client.get(state).json() == {"embedded": False, "failed": True}
    page = client.get(question.get_absolute_url()).content.decode()
    assert "embedding this question failed" in page and "being embedded" not in page


def test_posting_a_question_of_control_characters_does_not_promise_similar_questions(client, fake_gemini):
    from project.questions.views import POSTED, POSTED_WITHOUT_TEXT

    def posted(title):
        data = {"title": title, "body": "", "category": "account"}
        response = client.post(reverse("questions:ask"), data, follow=True)
        return [str(message) for message in response.context["messages"]]

    assert posted("\x01\x02") == [POSTED_WITHOUT_TEXT]
    assert posted("Brand new") == [POSTED]
