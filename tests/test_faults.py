"""The fault suite: a few hundred rows against a misbehaving fake Gemini server.

Each scenario switches faults on and off while rows are embedded, lets the system
recover as it would on its own (failed rows come due, pauses end), and then checks
the one promise that matters: every surviving row holds the vector of its final text.
It counts what went wrong on the way:

- lost: rows with text that ended without a vector, other than rows the API rejected;
- stale: rows whose vector is not the vector of their final text;
- sent twice: texts the API embedded (answered 200) more than once;
- requests: every request the server received.

Figures are printed, and appended as JSON lines to ``$SEMANTIC_FAULT_REPORT`` when it
is set (docs/reliability.md is made from them)::

    SEMANTIC_FAULT_REPORT=/tmp/faults.jsonl python -m pytest -q -p no:cacheprovider tests/test_faults.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta

import numpy as np
import pytest
from django.db import connections
from django.utils import timezone

from semantic import embed_pending, suspend_embedding
from semantic.embedder import Embedder
from semantic.models import EmbeddingFailure, RateLimit
from semantic.ratelimit import configuration_problem
from semantic.registry import get_embedding_field
from semantic.text import clean
from tests.commands import manage
from tests.fake_gemini import BAD_KEY, api_error, fake_vector
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 300
BATCH = 25


@dataclass
class Tally:
    scenario: str
    rows: int
    lost: int
    stale: int
    sent_twice: int
    requests: int
    rejected: int = 0

    def report(self) -> None:
        print(f"\n{self}")
        if path := os.environ.get("SEMANTIC_FAULT_REPORT"):
            with open(path, "a") as out:
                out.write(json.dumps(asdict(self)) + "\n")


@pytest.fixture(autouse=True)
def batches(semantic_settings):
    semantic_settings(BATCH_SIZE=BATCH)


def backlog(prefix: str, count: int = ROWS) -> list[int]:
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"{prefix} row {i}", body=f"body {i}") for i in range(count))
    return list(Article.objects.order_by("pk").values_list("pk", flat=True))


def recover(rounds: int = 10) -> None:
    """Time passes: failed rows come due and pauses end, then the sweep runs, until it has nothing to send."""
    for _ in range(rounds):
        EmbeddingFailure.objects.filter(permanent=False).update(retry_at=timezone.now())
        RateLimit.objects.update(paused_until=None)
        if not embed_pending("testapp.Article")["testapp.Article.embedding"]["requests"]:
            return
    raise AssertionError(f"still sending after {rounds} sweeps")


def tally(scenario: str, fake, rows: int) -> Tally:
    field = get_embedding_field(Article)
    rejected = set(EmbeddingFailure.objects.filter(permanent=True).values_list("object_pk", flat=True))
    lost = stale = 0
    for article in Article.objects.all():
        text = clean(field.source_text(article), 8000)
        if article.embedding is None:
            lost += bool(text) and str(article.pk) not in rejected
            continue
        wanted = np.array(fake_vector(text, field.dimensions))
        wanted /= np.linalg.norm(wanted)
        current = article.embedding_embedded_hash == field.text_hash(article)
        stale += not (current and np.allclose(np.array(article.embedding), wanted, atol=1e-5))
    sent = Counter(fake.texts(embedded=True))
    result = Tally(
        scenario=scenario,
        rows=rows,
        lost=lost,
        stale=stale,
        sent_twice=sum(1 for count in sent.values() if count > 1),
        requests=fake.request_count,
        rejected=len(rejected),
    )
    result.report()
    return result


def test_a_429_storm_with_retry_after(fake_gemini):
    backlog("storm")
    # Every other request is refused for a moment, and once for two minutes (longer than MAX_BACKOFF).
    turns = iter(range(10_000))

    def storm(record):
        turn = next(turns)
        if turn % 2 == 0 and turn < 20:
            fake_gemini.fail_next(429, retry_after="120" if turn == 10 else "0.1")

    fake_gemini.on_request = storm
    embed_pending("testapp.Article")
    assert RateLimit.objects.get().paused_until is not None  # the long wait was shared
    assert EmbeddingFailure.objects.filter(permanent=False).exists()  # and the batch that got it waits it out
    recover()
    result = tally("429 storm (Retry-After 0.1 s, once 120 s)", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 0)
    assert fake_gemini.request_count == ROWS // BATCH + 10


def test_a_429_storm_with_the_wait_in_the_body_only(fake_gemini):
    """What the Gemini API sends: no Retry-After header, a RetryInfo retryDelay in the body.
    The first 429 pauses every process on the key; the run stops instead of sending on."""
    backlog("retry info")
    fake_gemini.fail_every(429, body=api_error(429, "Quota exceeded.", "RESOURCE_EXHAUSTED", retry_delay="30s"))
    summary = embed_pending("testapp.Article")["testapp.Article.embedding"]
    assert fake_gemini.request_count == 1 and summary["failed"] == BATCH
    assert summary["stopped"].startswith("Sending is paused for another")
    assert RateLimit.objects.get().paused_until > timezone.now() + timedelta(seconds=20)
    assert all(f.retry_at > timezone.now() + timedelta(seconds=20) for f in EmbeddingFailure.objects.all())
    fake_gemini.broken = None
    recover()
    result = tally("429 storm, wait only in the body (RetryInfo 30 s)", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 0)
    assert result.requests == 1 + ROWS // BATCH


def test_malformed_vectors_nan_infinite_or_empty(fake_gemini):
    """A 200 whose vectors cannot be stored: retried like a malformed answer, never written."""
    backlog("bad vectors")
    turns = iter(range(10_000))
    answers = ['{"values": [NaN%s]}' % (", 0.1" * 127), '{"values": [1e400%s]}' % (", 0.1" * 127), "{}"]

    def bad_vectors(record):
        turn = next(turns)
        if turn % 3 == 0 and turn < 30:
            fake_gemini.bad_embeddings_next(answers[turn // 3 % 3])

    fake_gemini.on_request = bad_vectors
    embed_pending("testapp.Article")
    recover()
    result = tally("vectors with NaN, Infinity or no values", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 0)
    assert not EmbeddingFailure.objects.exists()


def test_5xx_bursts_and_malformed_answers(fake_gemini):
    backlog("bursts")
    turns = iter(range(10_000))

    def bursts(record):
        turn = next(turns)
        if turn % 4 == 0 and turn < 40:
            fake_gemini.fail_next((500, 502, 503, 504)[turn // 4 % 4])
        elif turn % 4 == 1 and turn < 40:
            fake_gemini.malformed_next()

    fake_gemini.on_request = bursts
    embed_pending("testapp.Article")
    recover()
    result = tally("5xx bursts and malformed JSON", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 0)
    assert not EmbeddingFailure.objects.exists()


@pytest.mark.parametrize("outage", ["500", "hung"])
def test_an_outage_stops_the_run_after_one_batch_spent_its_attempts(fake_gemini, semantic_settings, outage):
    """The API answers 500, or holds every request past TIMEOUT: the next batch would wait as long
    (MAX_ATTEMPTS x TIMEOUT each, until django-q2 kills the task with a batch in flight), so the
    run stops after the first; only its rows get failure records, the others stay pending."""
    backlog("outage")
    if outage == "500":
        fake_gemini.fail_every(500, body=api_error(500, "Internal error encountered.", "INTERNAL"))
    else:
        semantic_settings(TIMEOUT=0.2)
        fake_gemini.latency = 1.0
    summary = embed_pending("testapp.Article")["testapp.Article.embedding"]
    assert fake_gemini.request_count == 4  # MAX_ATTEMPTS, for the first batch only
    first = Article.objects.order_by("pk").values_list("pk", flat=True)[:BATCH]
    failures = EmbeddingFailure.objects.all()
    assert sorted(int(f.object_pk) for f in failures) == list(first)
    assert all(f.attempts == 4 and not f.permanent for f in failures)
    error = failures[0].error
    assert ("500" in error) if outage == "500" else ("timed out" in error or "Timeout" in error)
    assert summary["stopped"] == Embedder.API_FAILING.format(error=error, attempts=4)
    assert summary["failed"] == BATCH and summary["errors"] == [error, summary["stopped"]]
    assert not Article.objects.filter(embedding__isnull=False).exists()

    fake_gemini.reset()  # the API is back
    recover()
    result = tally(f"an outage ({outage}): one batch's attempts, then the run stops", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 0)


def test_a_bad_key_then_a_fixed_key(fake_gemini, semantic_settings):
    backlog("bad key")
    fake_gemini.fail_every(400, body=BAD_KEY)
    embed_pending("testapp.Article")
    for i in range(5):  # saves while the key is bad wait too
        Article.objects.create(title=f"saved with a bad key {i}", body="")
    embed_pending("testapp.Article")
    assert fake_gemini.request_count == 1
    assert not EmbeddingFailure.objects.exists()
    assert "SEMANTIC['API_KEY']" in configuration_problem()

    fake_gemini.broken = None
    semantic_settings(API_KEY="AIzaFIXED-key")
    embed_pending("testapp.Article")
    assert configuration_problem() is None
    result = tally("bad key (400 API_KEY_INVALID), then a new key", fake_gemini, ROWS + 5)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 0)
    assert result.requests == 1 + -(-(ROWS + 5) // BATCH)


def test_one_rejected_row_among_many(fake_gemini):
    backlog("reject")
    Article.objects.filter(title="reject row 137").update(title="reject row 137 REJECTED")
    fake_gemini.reject_marker = "REJECTED"
    fake_gemini.fail_next(500, times=3)  # and a rough start
    embed_pending("testapp.Article")
    recover()
    result = tally("one rejected row, after three 500s", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 1)
    assert EmbeddingFailure.objects.get().permanent
    # 3 x 500, then the batch with the bad row is halved down to it: 1 + 2 * log2(25) requests at most.
    assert result.requests <= 3 + ROWS // BATCH + 2 * 5


def test_edits_updates_and_deletes_while_batches_are_in_flight(fake_gemini):
    pks = backlog("in flight")
    by_text = {clean(get_embedding_field(Article).source_text(a), 8000): a.pk for a in Article.objects.all()}
    turns = iter(range(10_000))
    deleted = []

    def meddle(record):
        """Runs between a request's arrival and its answer, as another process would."""
        turn = next(turns)
        in_flight = [by_text.get(r["content"]["parts"][0]["text"]) for r in record["body"]["requests"]]
        in_flight = [pk for pk in in_flight if pk]
        try:
            if turn == 1:
                Article.objects.filter(pk__in=in_flight[:5]).update(body="changed by update()")
            elif turn == 2:
                for article in Article.objects.filter(pk__in=in_flight[:5]):
                    article.title += " (saved)"
                    article.save()
            elif turn == 3:
                gone = in_flight[:3] + pks[-3:]  # three in this batch, three not sent yet
                Article.objects.filter(pk__in=gone).delete()
                deleted.extend(gone)
            elif turn == 4:
                Article.objects.filter(pk__in=in_flight[5:8]).update(title="", body="")  # text emptied in flight
        finally:
            connections.close_all()

    fake_gemini.on_request = meddle
    first = embed_pending("testapp.Article")["testapp.Article.embedding"]
    assert first["changed_in_flight"] >= 8  # the writes for edited, emptied and deleted rows found them changed
    recover()
    assert len(set(deleted)) >= 3
    assert Article.objects.count() == ROWS - len(set(deleted)) and not Article.objects.filter(pk__in=deleted).exists()
    result = tally("edits, update() and deletes in flight", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.sent_twice, result.rejected) == (0, 0, 0, 0)


def test_a_real_worker_killed_mid_run(fake_gemini, semantic_settings, tmp_path):
    """A django-q2 qcluster takes the sweep and is SIGKILLed mid-request; the next sweep finishes the work."""
    from django_q.tasks import async_task

    semantic_settings(SYNC=False)
    backlog("killed")
    fake_gemini.latency = 0.2
    killed = threading.Event()
    log = tmp_path / "qcluster.log"
    with log.open("wb") as out:
        worker = manage(fake_gemini, "qcluster", stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_on_the_second_request(record):
        if len(fake_gemini.requests) == 2 and not killed.is_set():
            os.killpg(worker.pid, signal.SIGKILL)  # the worker and its django-q2 children, mid-request
            killed.set()

    fake_gemini.on_request = kill_on_the_second_request
    try:
        async_task("semantic.tasks.embed_pending", "testapp.Article")
        assert killed.wait(120), log.read_text()
        worker.wait(30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert fake_gemini.request_count == 2
    fake_gemini.latency = 0.0
    fake_gemini.on_request = None
    semantic_settings(SYNC=True)
    deadline = time.monotonic() + 30
    while Article.objects.filter(embedding__isnull=True).exists() and time.monotonic() < deadline:
        recover()  # row claims of the dead worker's session go when PostgreSQL notices it is gone
    result = tally("real qcluster SIGKILLed during its 2nd request", fake_gemini, ROWS)
    assert (result.lost, result.stale, result.rejected) == (0, 0, 0)
    # At most the batch in flight when the worker died (the worker process batches by 100: tests/settings.py).
    assert result.sent_twice <= 100
