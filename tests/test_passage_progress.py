"""A long text's passages over several runs (review 3, languages F4): every run keeps what it
paid for, stops before django-q2's timeout would kill its task, and the short rows of its
batch are not held back by the long one.

Real PostgreSQL and the fake Gemini server. Time is the number of requests the server has
answered (the Embedder's ``clock``), never the wall clock.
"""

import logging
import time

import pytest
from django.core.cache import cache

from semantic import suspend_embedding
from semantic.embedder import Embedder
from semantic.models import Passage
from semantic.passage_rows import cut_marker, lagging_rows
from semantic.passage_worker import PASSAGES_LEFT
from semantic.passages import split
from semantic.running_task import run_deadline
from semantic.tasks import embed_pending
from tests.test_passages import TOPICS, paragraph
from tests.testapp.models import LongRead

pytestmark = pytest.mark.django_db(transaction=True)

FIELD = LongRead._meta.get_field("embedding")


def text(paragraphs: int, tag: str) -> str:
    """``paragraphs`` distinct paragraphs of about 2,500 characters: one passage each (Gemini's 8,000)."""
    return "\n\n".join(paragraph(*TOPICS[n % len(TOPICS)], tag=f" {tag}{n}") for n in range(paragraphs))


def passages_of(row):
    return list(Passage.objects.filter(object_pk=str(row.pk), field_name="embedding").order_by("position"))


@pytest.fixture
def batch(fake_gemini, semantic_settings):
    """One long row (12 passages) saved before two short ones (2 each): one batch of rows."""
    semantic_settings(BATCH_SIZE=4)
    cache.clear()
    with suspend_embedding():
        long = LongRead.objects.create(title="Long", body=text(12, "long"))
        short = [LongRead.objects.create(title=f"Short {n}", body=text(2, f"short{n}")) for n in range(2)]
    assert [len(split(row.body, max_chars=8000, overlap=1000)) for row in [long, *short]] == [12, 2, 2]
    fake_gemini.reset()
    return long, short


def test_a_run_out_of_time_keeps_its_passages_and_the_next_sends_only_the_rest(batch, fake_gemini, caplog):
    long, short = batch
    embedder = Embedder(LongRead, FIELD)
    embedder.clock = lambda: fake_gemini.request_count
    # Gemini takes one title a request: the three rows, each short row's passages, four of the long row's.
    embedder.deadline = 6

    with caplog.at_level(logging.WARNING, logger="semantic"):
        outcome = embedder.run()

    assert fake_gemini.request_count == 6
    assert outcome.stopped == Embedder.OUT_OF_TIME
    assert outcome.embedded == 3 and outcome.passages == 8
    # The short rows are complete and current, though the long row comes first in the batch.
    for row in short:
        row.refresh_from_db()
        stored = passages_of(row)
        assert [p.text for p in stored] == [p.text for p in split(row.body, max_chars=8000, overlap=1000)]
        assert {p.cut_from for p in stored} == {cut_marker(FIELD, getattr(row, FIELD.embedded_hash_name))}
    # The long row keeps the four passages it paid for, marked partial: still lagging.
    kept = {p.position: (p.text_hash, list(p.vector)) for p in passages_of(long)}
    assert sorted(kept) == [0, 1, 2, 3]
    long.refresh_from_db()
    partial = cut_marker(FIELD, getattr(long, FIELD.embedded_hash_name), partial=True)
    assert {p.cut_from for p in passages_of(long)} == {partial}  # of this text, not a complete cut
    assert list(lagging_rows(LongRead, FIELD).values_list("pk", flat=True)) == [long.pk]
    label = "testapp.LongRead.embedding"
    assert PASSAGES_LEFT % (label, 8, 1) in caplog.messages

    # A search by passages finds the long row by what is stored of it, at offsets in its text.
    found = next(
        row for row in LongRead.objects.similar_to("orchestra violin concerto", passages=True) if row.pk == long.pk
    )
    assert found.passage_position == 1
    assert found.body[found.passage_start : found.passage_end] == found.passage_text

    fake_gemini.reset()
    summary = embed_pending(LongRead)[label]  # outside a django-q2 task: no time limit
    sent = fake_gemini.texts()
    expected = split(long.body, max_chars=8000, overlap=1000)
    assert sent == [p.text for p in expected[4:]]  # only the passages not paid for yet
    assert fake_gemini.request_count == 2
    assert summary["passages"] == 8 and summary["passages_reused"] == 4 and summary["passage_rows"] == 1
    long.refresh_from_db()
    stored = passages_of(long)
    assert [p.text for p in stored] == [p.text for p in expected]
    assert {p.cut_from for p in stored} == {cut_marker(FIELD, getattr(long, FIELD.embedded_hash_name))}
    assert {p.position: (p.text_hash, list(p.vector)) for p in stored[:4]} == kept
    assert not lagging_rows(LongRead, FIELD).exists()


def remaining() -> float | None:
    """A django-q2 task's view of its run deadline: seconds left, as an Embedder sees them."""
    deadline = Embedder(LongRead, FIELD).deadline
    return None if deadline is None else deadline - time.monotonic()


def test_a_run_in_a_django_q2_task_stops_before_the_tasks_timeout(settings):
    from django_q.conf import Conf
    from django_q.tasks import async_task, result

    assert run_deadline() is None and Embedder(LongRead, FIELD).deadline is None  # not in a task
    left = result(async_task("tests.test_passage_progress.remaining", sync=True))
    # Q_CLUSTER["timeout"] (60 s in the tests) less the last request (TIMEOUT, 5 s) and its writing (10 s).
    assert Conf.TIMEOUT == 60
    assert 0 < left <= 60 - 5 - 10
    assert run_deadline() is None  # the task is over


def test_re_cutting_rows_that_send_nothing_stops_at_the_deadline_too(fake_gemini, semantic_settings):
    """After an upgrade that changes the cutting rules, the sweep re-cuts every row with passages,
    reusing each passage's vector: no request is sent, so only this loop can see the deadline."""
    semantic_settings(BATCH_SIZE=2)
    rows = [LongRead.objects.create(title=f"Row {n}", body=text(2, f"row{n}")) for n in range(5)]
    embed_pending(LongRead)
    assert not lagging_rows(LongRead, FIELD).exists()
    # As rules of an earlier version (CUT_RULES) left them: every row lags, every passage text is the same.
    Passage.objects.filter(field_name="embedding").update(cut_from="cut by an earlier version")
    fake_gemini.reset()
    embedder = Embedder(LongRead, FIELD)
    embedder.clock = lambda: len(rows) - lagging_rows(LongRead, FIELD).count()  # rows re-cut so far
    embedder.deadline = 2

    embedder.run_passages()

    assert fake_gemini.request_count == 0
    assert embedder.outcome.stopped == Embedder.OUT_OF_TIME
    assert lagging_rows(LongRead, FIELD).count() == 3  # one batch re-cut; the rest waits for the next sweep
    assert embedder.outcome.passages_reused == 4
