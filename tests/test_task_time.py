"""A run inside a django-q2 task with a project's own short ``Q_CLUSTER["timeout"]`` (review 3,
djangoq F2): it stops before the kill, and an API failing until then is recorded as failing.

Real PostgreSQL and the fake Gemini server. Time is the number of requests the server has
answered (the Embedder's ``clock``), never the wall clock.
"""

import time

import pytest
from django.conf import settings
from django.urls import reverse

from semantic import running_task, suspend_embedding
from semantic.checks import check_task_time
from semantic.embedder import Embedder
from semantic.models import EmbeddingFailure
from semantic.registry import get_embedding_field
from semantic.running_task import STORE_SECONDS, TASK_TIME_HINT, TASK_TIME_TOO_SHORT, run_deadline
from semantic.status import field_status
from tests.commands import call
from tests.fake_gemini import api_error
from tests.testapp.models import Article

FIELD = get_embedding_field(Article)
BATCH = 5


@pytest.fixture
def q_timeout(monkeypatch):
    """Set django-q2's task timeout (read into its ``Conf`` class at import, as a worker reads it)."""
    from django_q.conf import Conf

    def change(seconds):
        monkeypatch.setattr(Conf, "TIMEOUT", seconds)

    return change


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outage", ["500", "hanging"])
def test_a_failing_api_at_the_deadline_is_recorded_as_failing(outage, fake_gemini, semantic_settings, admin_client):
    """The deadline comes before the request's last attempt (MAX_ATTEMPTS is 4): its rows are
    recorded as failed, as after the last attempt, so status and the admin say the API is failing."""
    semantic_settings(BATCH_SIZE=BATCH)
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Row {i}", body="slow api") for i in range(3 * BATCH))
    if outage == "500":
        fake_gemini.fail_every(500, body=api_error(500, "Internal error encountered.", "INTERNAL"))
    else:
        semantic_settings(TIMEOUT=0.2)
        fake_gemini.latency = 1.0
    embedder = Embedder(Article, FIELD)
    embedder.clock = lambda: fake_gemini.request_count
    embedder.deadline = 2

    outcome = embedder.run()

    assert fake_gemini.request_count == 2
    failures = list(EmbeddingFailure.objects.all())
    first = list(Article.objects.order_by("pk").values_list("pk", flat=True)[:BATCH])
    assert sorted(int(f.object_pk) for f in failures) == first
    assert all(f.attempts == 2 and not f.permanent and f.retry_at is not None for f in failures)
    error = failures[0].error
    assert ("500" in error) if outage == "500" else ("timed out" in error or "Timeout" in error)
    assert outcome.stopped == Embedder.API_FAILING_OUT_OF_TIME.format(error=error, attempts=2)
    assert outcome.failed == BATCH and outcome.errors == [error, outcome.stopped]

    status = field_status(Article, FIELD)
    assert (status["failed"], status["pending"]) == (BATCH, 2 * BATCH)
    out, _ = call("semantic_status", "testapp.Article")
    assert "testapp.Article.embedding 15 0 10 0 5 0" in " ".join(out.split())  # total .. failed, empty
    page = admin_client.get(reverse("admin:semantic_status")).content.decode()
    assert error[:60] in page and settings.TEST_API_KEY not in page


@pytest.mark.django_db(transaction=True)
def test_a_run_out_of_time_with_the_api_answering_records_nothing(fake_gemini, semantic_settings):
    semantic_settings(BATCH_SIZE=BATCH)
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Row {i}", body="fine api") for i in range(3 * BATCH))
    embedder = Embedder(Article, FIELD)
    embedder.clock = lambda: fake_gemini.request_count
    embedder.deadline = 2

    outcome = embedder.run()

    assert outcome.stopped == Embedder.OUT_OF_TIME and outcome.embedded == 2 * BATCH
    assert not EmbeddingFailure.objects.exists()


def test_a_request_sent_at_the_deadline_is_written_before_the_task_is_killed(q_timeout, semantic_settings):
    """A project's 60 s with the default 30 s TIMEOUT: the last request may take 30 s and its
    writing 10 s, so sending stops 40 s before the kill, not half-way (30 s)."""
    q_timeout(60)
    semantic_settings(TIMEOUT=30.0)
    started = time.monotonic()
    running_task.task_started()
    kill = time.monotonic() + 60  # at the earliest: django-q2 starts its timer after pre_execute
    try:
        assert run_deadline() + 30.0 + STORE_SECONDS <= kill
        assert run_deadline() > started
    finally:
        running_task.task_ended()


def test_a_timeout_that_fits_no_request_is_a_warning(q_timeout, semantic_settings):
    semantic_settings(TIMEOUT=30.0)
    q_timeout(40)
    [warning] = check_task_time()
    assert warning.id == "semantic.W008"
    assert warning.msg == TASK_TIME_TOO_SHORT.format(timeout=40, request=30.0, store=STORE_SECONDS)
    assert warning.hint == TASK_TIME_HINT.format(needed="40")
    q_timeout(41)
    assert check_task_time() == []
    q_timeout(None)  # no timeout: django-q2 never kills a task
    assert check_task_time() == []
