"""semantic_embed --batch-api against the fake server's batch jobs, through the real google-genai client."""

import json
import math
import signal
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from semantic import batch, batch_collect, embed_pending, suspend_embedding
from semantic.backends.base import l2_normalize
from semantic.claims import DEFERRED
from semantic.embedder import Embedder, pending_rows
from semantic.management.commands.semantic_embed import Command as Embed
from semantic.management.commands.semantic_status import Command as Status
from semantic.models import EmbeddingBatchJob, EmbeddingFailure
from semantic.registry import get_embedding_field
from semantic.text import source_hash
from tests.commands import call, call_failing, manage
from tests.fake_gemini import fake_vector
from tests.testapp.models import Article, LongRead, Snippet

pytestmark = pytest.mark.django_db(transaction=True)

LABEL = "testapp.Article.embedding"
FAST = ("--poll-interval", "0.01")


def test_a_batch_job_embeds_the_pending_rows(backlog, fake_gemini):
    fake_gemini.batch_polls_until_done = 3
    out, _ = call("semantic_embed", "testapp.Article", "--batch-api", *FAST)

    (job,) = EmbeddingBatchJob.objects.all()
    assert Embed.BATCH_SUBMITTED.format(label=LABEL, name=job.name, rows=25) in out
    assert (
        Embed.BATCH_DONE.format(
            label=LABEL, name=job.name, state="JOB_STATE_SUCCEEDED", embedded=25, failed=0, changed=0
        )
        in out
    )
    waiting = Embed.BATCH_WAITING.split(" after")[0].format(label=LABEL, name=job.name, state="JOB_STATE_RUNNING")
    assert waiting in out
    assert fake_gemini.request_count == 0  # nothing went through the interactive endpoint
    (request,) = fake_gemini.batch_requests
    sent = [r["request"] for r in request["body"]["batch"]["inputConfig"]["requests"]["requests"]]
    assert [r["content"]["parts"][0]["text"] for r in sent] == [a.title for a in backlog]
    assert {(r["taskType"], r["outputDimensionality"]) for r in sent} == {("SEMANTIC_SIMILARITY", 128)}

    row = Article.objects.get(pk=backlog[0].pk)
    expected = l2_normalize(fake_vector(row.title, 128))
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(row.embedding, expected))
    assert row.embedding_spec == get_embedding_field(Article).spec()
    assert not pending_rows(Article, get_embedding_field(Article)).exists()
    assert (job.state, job.embedded, job.failed, job.rows) == ("JOB_STATE_SUCCEEDED", 25, 0, 25)
    assert job.finished_at is not None

    out, _ = call("semantic_embed", "testapp.Article", "--batch-api", *FAST)
    assert Embed.NOTHING.format(label=LABEL) in out
    assert len(fake_gemini.batch_requests) == 1


def test_dry_run_prices_the_batch_api_at_half(backlog):
    interactive, _ = call("semantic_embed", "testapp.Article", "--dry-run")
    batched, _ = call("semantic_embed", "testapp.Article", "--dry-run", "--batch-api")
    assert "at 0.15 per million tokens" in interactive
    assert "at 0.075 per million tokens" in batched
    assert not EmbeddingBatchJob.objects.exists()


def test_a_stopped_command_leaves_the_job_its_rows_and_a_rerun_collects_it(backlog, fake_gemini):
    fake_gemini.batch_polls_until_done = 10_000  # still running when the command is stopped
    process = manage(fake_gemini, "semantic_embed", "testapp.Article", "--batch-api", "--poll-interval", "0.1")
    deadline = time.monotonic() + 60
    while not EmbeddingBatchJob.objects.filter(state="JOB_STATE_RUNNING").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    (job,) = EmbeddingBatchJob.objects.all()
    assert process.returncode == 130
    assert Embed.BATCH_STOPPED.format(names=job.name) in err
    assert job.finished_at is None

    # While the job is open its rows are left to it: workers do not pay for them again.
    field = get_embedding_field(Article)
    assert Embedder(Article, field).run().requests == 0
    assert fake_gemini.request_count == 0
    edited = backlog[3]
    edited.title = "Edited while its batch job ran"
    edited.save()  # the save hook's task leaves it to the job too
    assert fake_gemini.request_count == 0
    # A run without --batch-api says where the rows are, and how to collect them.
    held = Embed.HELD.format(label=LABEL, rows=25, names=job.name)
    for args in ((), ("--dry-run",)):
        out, err = call("semantic_embed", LABEL, *args)
        assert held in err
    # So does semantic_status, which counts them pending (their text has no vector yet).
    out, _ = call("semantic_status", "testapp.Article")
    assert Status.HELD.format(label=LABEL, rows=25, names=job.name) in out
    (status,) = json.loads(call("semantic_status", "testapp.Article", "--json")[0])
    assert (status["pending"], status["in_batch_jobs"], status["batch_jobs"]) == (25, 25, [job.name])

    fake_gemini.jobs[job.name].polls_left = 1  # Gemini finishes the job
    out, _ = call("semantic_embed", "testapp.Article", "--batch-job", job.name, *FAST)
    assert Embed.BATCH_RESUMING.split(" (")[0].format(label=LABEL, name=job.name) in out
    assert (
        Embed.BATCH_DONE.format(
            label=LABEL, name=job.name, state="JOB_STATE_SUCCEEDED", embedded=24, failed=0, changed=1
        )
        in out
    )
    assert len(fake_gemini.batch_requests) == 1  # collected, not submitted again
    # The edited row kept no vector of its old text; it is pending again, for its new text.
    assert Article.objects.get(pk=edited.pk).embedding is None
    assert list(pending_rows(Article, field).values_list("pk", flat=True)) == [edited.pk]
    call("semantic_embed", "testapp.Article")
    assert fake_gemini.texts() == ["Edited while its batch job ran"]


def test_a_failed_job_leaves_its_rows_pending(backlog, fake_gemini):
    fake_gemini.fail_next_batch("Quota exceeded for batch jobs.")
    _, err = call("semantic_embed", "testapp.Article", "--batch-api", *FAST)
    (job,) = EmbeddingBatchJob.objects.all()
    assert Embed.BATCH_FAILED.split(" (")[0].format(label=LABEL, name=job.name, state="JOB_STATE_FAILED") in err
    assert "its 25 rows are still pending" in err
    assert job.finished_at is not None and job.name in job.error
    assert not Article.objects.filter(embedding__isnull=False).exists()
    assert pending_rows(Article, get_embedding_field(Article)).count() == 25

    out, _ = call("semantic_embed", "testapp.Article", "--batch-api", *FAST)  # submitted again, succeeds
    assert "25 embedded" in out
    assert len(fake_gemini.batch_requests) == 2


def test_a_job_gemini_no_longer_knows_is_closed_and_its_rows_submitted_again(backlog, fake_gemini):
    from semantic.backends.gemini import JOB_GONE, JOB_GONE_STATE

    field = get_embedding_field(Article)
    items = [[str(article.pk), field.text_hash(article)] for article in backlog]
    # Submitted by a run that was stopped; then deleted in Google AI Studio (the fake knows no such job).
    job = EmbeddingBatchJob.objects.create(
        name="batches/deleted-meanwhile",
        model_label="testapp.Article",
        field_name="embedding",
        spec=field.spec(),
        rows=len(items),
        first_pk=items[0][0],
        last_pk=items[-1][0],
        items=items,
    )
    out, err = call("semantic_embed", "testapp.Article", "--batch-api", *FAST)
    job.refresh_from_db()
    assert job.finished_at is not None and job.error == JOB_GONE.format(name=job.name)
    assert Embed.BATCH_FAILED.split(" (")[0].format(label=LABEL, name=job.name, state=JOB_GONE_STATE) in err
    assert "not a Gemini embedding model" not in err
    assert "25 embedded" in out  # its rows went into a new job of the same run
    assert not pending_rows(Article, field).exists()


def test_rejected_inputs_are_recorded_as_failures(backlog, fake_gemini):
    fake_gemini.reject_batch_marker = "number 7"
    out, err = call("semantic_embed", "testapp.Article", "--batch-api", *FAST)  # refused for good: exit status 0
    assert "24 embedded, 1 failed" in out
    assert Embed.REFUSED.format(rows=1, labels=LABEL) in err and Embed.FAILED_HINT not in err
    (failure,) = EmbeddingFailure.objects.all()
    assert failure.object_pk == str(backlog[7].pk)
    assert failure.permanent and "Batch job batches/fake-" in failure.error
    assert settings.TEST_API_KEY not in failure.error
    for job in EmbeddingBatchJob.objects.values():
        assert settings.TEST_API_KEY not in repr(job)


def test_a_vector_of_nans_in_a_job_is_a_malformed_answer_the_worker_retries(backlog, fake_gemini):
    """Written, it would fail the whole statement (pgvector refuses NaN) and every row of the job with it."""
    fake_gemini.nan_batch_marker = "number 7"
    out, err, error = call_failing("semantic_embed", "testapp.Article", "--batch-api", *FAST)  # a retry may cure it
    assert "24 embedded, 1 failed" in out
    assert error == Embed.SOME_FAILED.format(rows=1, labels=LABEL) and Embed.FAILED_HINT in err
    (failure,) = EmbeddingFailure.objects.all()
    assert failure.object_pk == str(backlog[7].pk) and not failure.permanent
    assert "a malformed answer (a vector holding NaN or infinite values)" in failure.error
    fake_gemini.reset()
    EmbeddingFailure.objects.update(retry_at=timezone.now())
    assert embed_pending("testapp.Article")["testapp.Article.embedding"]["embedded"] == 1
    assert not Article.objects.filter(embedding__isnull=True).exists()


def test_jobs_are_split_by_size(backlog, fake_gemini, monkeypatch):
    monkeypatch.setattr(batch, "MAX_JOB_ROWS", 10)
    out, _ = call("semantic_embed", "testapp.Article", "--batch-api", *FAST)
    assert [job.rows for job in EmbeddingBatchJob.objects.order_by("submitted_at")] == [10, 10, 5]
    assert out.count("JOB_STATE_SUCCEEDED") == 3
    assert not Article.objects.filter(embedding__isnull=True).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["testapp.Document.content", "--batch-api"], batch.NO_TITLES.format(label="testapp.Document.content")),
        (["testapp.Article", "--batch-api", "--queue"], "does not go with --queue"),
        (
            ["testapp.Article", "--batch-job", "batches/nope"],
            batch.UNKNOWN_JOB.format(name="batches/nope", label=LABEL),
        ),
        (["testapp.Article", "--batch-api", "--poll-interval", "0"], "--poll-interval must be a positive"),
    ],
)
def test_batch_bad_arguments(args, message):
    with pytest.raises(CommandError) as info:
        call("semantic_embed", *args)
    assert message in str(info.value)


def test_a_job_already_collected_is_named_as_collected_not_as_never_submitted(backlog, fake_gemini):
    """A second operator follows the README's --batch-job NAME after the first run finished."""
    call("semantic_embed", "testapp.Article", "--batch-api", *FAST)
    (job,) = EmbeddingBatchJob.objects.all()
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Article", "--batch-job", job.name, *FAST)
    finished = f"{timezone.localtime(job.finished_at):%Y-%m-%d %H:%M %Z}"
    assert str(info.value) == batch.COLLECTED_JOB.format(
        name=job.name, label=LABEL, finished=finished, state="JOB_STATE_SUCCEEDED", embedded=25, failed=0
    )
    EmbeddingBatchJob.objects.update(finished_at=None, submitted_at=timezone.now() - timedelta(hours=49))
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Article", "--batch-job", job.name, *FAST)
    submitted = f"{timezone.localtime(EmbeddingBatchJob.objects.get().submitted_at):%Y-%m-%d %H:%M %Z}"
    assert str(info.value) == batch.EXPIRED_JOB.format(name=job.name, label=LABEL, submitted=submitted)
    assert len(fake_gemini.batch_requests) == 1


def test_collected_and_expired_jobs_are_named_with_use_tz_false(backlog, fake_gemini, settings):
    """Django's naive-datetime mode: the job's times are local times already, shown as they are
    (timezone.localtime() refuses them: the command crashed with a ValueError)."""
    settings.USE_TZ = False
    call("semantic_embed", "testapp.Article", "--batch-api", *FAST)
    (job,) = EmbeddingBatchJob.objects.all()
    assert timezone.is_naive(job.finished_at)
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Article", "--batch-job", job.name, *FAST)
    assert str(info.value) == batch.COLLECTED_JOB.format(
        name=job.name,
        label=LABEL,
        finished=f"{job.finished_at:%Y-%m-%d %H:%M}",
        state="JOB_STATE_SUCCEEDED",
        embedded=25,
        failed=0,
    )
    EmbeddingBatchJob.objects.update(finished_at=None, submitted_at=timezone.now() - timedelta(hours=49))
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Article", "--batch-job", job.name, *FAST)
    submitted = f"{EmbeddingBatchJob.objects.get().submitted_at:%Y-%m-%d %H:%M}"
    assert str(info.value) == batch.EXPIRED_JOB.format(name=job.name, label=LABEL, submitted=submitted)


def test_a_scheduled_django_q2_task_runs_batch_jobs_by_model_label_and_field_name(backlog, fake_gemini):
    """README: semantic.batch.run "which a scheduled django-q2 task can call". A Schedule
    carries literals only; run here by django-q2's own scheduler, the task synchronous."""
    from django_q.models import Schedule, Task
    from django_q.scheduler import scheduler
    from django_q.tasks import schedule

    # As README prints it, plus a short poll and a synchronous task for the test.
    schedule(
        "semantic.batch.run",
        "testapp.Article",
        "embedding",
        schedule_type=Schedule.DAILY,
        poll_interval=0.01,
        q_options={"sync": True},
    )
    scheduler()
    (task,) = Task.objects.all()
    assert task.success, task.result
    (job,) = EmbeddingBatchJob.objects.all()
    assert (job.state, job.embedded, job.rows) == ("JOB_STATE_SUCCEEDED", 25, 25)
    assert not pending_rows(Article, get_embedding_field(Article)).exists()
    assert [j.name for j in task.result] == [job.name]


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((Article, "embeding"), ValueError, "testapp.Article has no EmbeddingField named 'embeding'; it has embedding"),
        (("testapp.Nope", "embedding"), LookupError, "doesn't have a 'Nope' model"),
        ((Article, 42), TypeError, batch.RUN_ARGUMENTS.format(model=Article, field=42)),
    ],
)
def test_batch_run_says_what_it_takes(args, error, message):
    with pytest.raises(error) as info:
        batch.run(*args, poll_interval=0.01)
    assert message in str(info.value)


def test_the_local_model_has_no_batch_api(semantic_settings):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Note", "--batch-api")
    assert str(info.value) == batch.NEEDS_GEMINI.format(
        label="testapp.Note.embedding", model_id="local:all-MiniLM-L6-v2"
    )


@pytest.fixture
def reports(fake_gemini):
    """Two long Reports in passages and a short one, saved without embedding (UUID keys, no title)."""
    from semantic import suspend_embedding
    from tests.test_passages import article
    from tests.testapp.models import Report

    with suspend_embedding():
        rows = [
            Report.objects.create(title=f"Report {i}", body=article(order))
            for i, order in enumerate([[0, 1, 2], [3, 4]])
        ]
        rows.append(Report.objects.create(title="Short", body="A short note about bread and yeast."))
    return rows


def test_passages_go_through_batch_jobs_of_their_own(reports, fake_gemini):
    from semantic.passage_rows import lagging_rows, passages_of
    from semantic.passages import split
    from tests.testapp.models import Report

    label = "testapp.Report.embedding"
    out, _ = call("semantic_embed", "testapp.Report", "--batch-api", *FAST)
    rows_job, passages_job = EmbeddingBatchJob.objects.order_by("submitted_at")
    assert (rows_job.passages, rows_job.rows, passages_job.passages, passages_job.rows) == (False, 3, True, 5)
    assert fake_gemini.request_count == 0  # nothing through the interactive endpoint
    assert Embed.BATCH_PASSAGES_SUBMITTED.format(label=label, name=passages_job.name, rows=5) in out
    done = Embed.BATCH_PASSAGES_DONE.format(
        label=label, name=passages_job.name, state="JOB_STATE_SUCCEEDED", embedded=5, rows=2, failed=0, changed=0
    )
    assert done in out

    # The second job carried the long rows' passages, in order; the short row's one passage is its whole
    # text, so it took the row's own vector when the passages were submitted.
    request = fake_gemini.batch_requests[1]
    sent = [r["request"] for r in request["body"]["batch"]["inputConfig"]["requests"]["requests"]]
    long_rows = sorted(reports[:2], key=lambda row: row.pk)
    expected = [p.text for row in long_rows for p in split(row.body, max_chars=8000, overlap=1000)]
    assert [r["content"]["parts"][0]["text"] for r in sent] == expected
    field = get_embedding_field(Report)
    stored = passages_of(Report, field).order_by("object_pk", "position")
    assert [p.text for p in stored if p.object_pk != str(reports[2].pk)] == expected
    (short,) = [p for p in stored if p.object_pk == str(reports[2].pk)]
    assert list(short.vector) == list(Report.objects.get(pk=reports[2].pk).embedding)
    assert not lagging_rows(Report, field).exists()
    found = Report.objects.similar_to("the arctic glacier moraine frozen", passages=True)[0]
    assert (found.pk, found.passage_position) == (reports[0].pk, 2)

    out, _ = call("semantic_embed", "testapp.Report", "--batch-api", *FAST)
    assert Embed.NOTHING.format(label=label) in out
    assert len(fake_gemini.batch_requests) == 2


def test_an_open_passage_job_keeps_its_rows_and_skips_a_row_edited_meanwhile(reports, fake_gemini):
    from semantic.passage_rows import lagging_rows, passages_of
    from tests.testapp.models import Report

    field = get_embedding_field(Report)
    fake_gemini.batch_polls_until_done = 1
    (rows_job,) = batch.submit(Report, field)
    batch_collect.collect(Report, field, rows_job, batch_collect.wait(rows_job, field, poll_interval=0))
    fake_gemini.batch_polls_until_done = 10_000
    (job,) = batch.submit_passages(Report, field)

    # While the job is open its rows still count as waiting for passages, and the worker leaves them to it.
    from semantic.status import field_status

    assert field_status(Report, field)["passages"]["lagging"] == 2  # the short row took its own vector
    Embedder(Report, field).run_passages()
    assert fake_gemini.request_count == 0
    edited = Report.objects.get(pk=reports[1].pk)
    edited.body = edited.body.replace("football", "rugby")
    edited.save()  # its own vector is embedded again now; its passages wait for the job
    assert fake_gemini.request_count == 1  # the row's own vector only
    assert not passages_of(Report, field).filter(object_pk=str(edited.pk)).exists()

    fake_gemini.jobs[job.name].polls_left = 1
    outcome = batch_collect.collect_passages(Report, field, job, batch_collect.wait(job, field, poll_interval=0))
    assert (outcome.passage_rows, outcome.changed_in_flight) == (1, 1)  # the edited row was cut from its old text
    assert not passages_of(Report, field).filter(object_pk=str(edited.pk)).exists()
    Embedder(Report, field).run_passages()  # the job is finished: the worker takes the edited row
    assert not lagging_rows(Report, field).exists()
    assert "rugby" in passages_of(Report, field).filter(object_pk=str(edited.pk)).order_by("position").last().text


def test_a_rerun_collects_an_open_passage_job(reports, fake_gemini):
    from semantic.passage_rows import lagging_rows
    from tests.testapp.models import Report

    field = get_embedding_field(Report)
    (rows_job,) = batch.submit(Report, field)
    batch_collect.collect(Report, field, rows_job, batch_collect.wait(rows_job, field, poll_interval=0))
    fake_gemini.batch_polls_until_done = 10_000  # as if the command had been stopped while Gemini worked
    (job,) = batch.submit_passages(Report, field)
    fake_gemini.jobs[job.name].polls_left = 1

    out, _ = call("semantic_embed", "testapp.Report", "--batch-api", *FAST)
    resumed = Embed.BATCH_RESUMING.format(
        label="testapp.Report.embedding",
        name=job.name,
        rows=5,
        unit="passages",
        submitted=f"{timezone.localtime(job.submitted_at):%Y-%m-%d %H:%M %Z}",
    )
    assert resumed in out
    assert "2 rows' passages stored" in out
    assert not lagging_rows(Report, field).exists() and len(fake_gemini.batch_requests) == 2


def test_a_refused_passage_is_recorded_against_its_row_and_the_other_rows_are_stored(fake_gemini):
    from semantic import suspend_embedding
    from semantic.passage_rows import FAILURE_SUFFIX, passages_of
    from tests.test_passages import article
    from tests.testapp.models import Report

    with suspend_embedding():
        # The satellite paragraph lies past the 8,000 characters the row's own vector reads.
        refused = Report.objects.create(title="Long", body=article([0, 1, 2, 3, 5]))
        other = Report.objects.create(title="Other", body=article([3, 4]))
    assert "satellite" not in refused.body[:8000]
    fake_gemini.reject_batch_marker = "satellite"
    out, err = call("semantic_embed", "testapp.Report", "--batch-api", *FAST)
    # Four of its five passages came back, and are kept back with it: a row's passages are stored together.
    assert "6 passages embedded, 1 rows' passages stored, 1 passages failed" in out
    assert Embed.REFUSED.format(rows=1, labels="testapp.Report.embedding") in err
    (failure,) = EmbeddingFailure.objects.all()
    assert (failure.object_pk, failure.field_name) == (str(refused.pk), "embedding" + FAILURE_SUFFIX)
    assert failure.permanent and "Batch job batches/fake-" in failure.error
    field = get_embedding_field(Report)
    assert not passages_of(Report, field).filter(object_pk=str(refused.pk)).exists()  # a row's passages go together
    assert passages_of(Report, field).filter(object_pk=str(other.pk)).count() == 2

    fake_gemini.reset()  # the refusal stands until the text changes: nothing is sent again
    out, _ = call("semantic_embed", "testapp.Report", "--batch-api", *FAST)
    assert Embed.NOTHING.format(label="testapp.Report.embedding") in out and fake_gemini.batch_requests == []


def test_rows_whose_text_from_python_was_never_hashed_go_through_a_batch_job(fake_gemini):
    # As AddField leaves rows that existed before a field whose text comes from a method.
    with suspend_embedding():
        Snippet.objects.bulk_create(Snippet(escaped=f"Another row {i}") for i in range(20))
        written = Snippet.objects.create(escaped="Written before the field")
        empty = Snippet.objects.create(escaped="")
    Snippet.objects.update(embedding_source_hash=None)

    with CaptureQueriesContext(connection) as queries:
        call("semantic_embed", "testapp.Snippet", "--batch-api", *FAST)

    hashed = [q for q in queries.captured_queries if 'SET "embedding_source_hash" = v.hash' in q["sql"]]
    assert len(hashed) == 1  # every row's hash in one statement, not one a row

    (job,) = EmbeddingBatchJob.objects.all()
    assert (job.embedded, job.failed, job.rows) == (21, 0, 21)
    written.refresh_from_db()
    assert written.embedding is not None
    assert written.embedding_source_hash == written.embedding_embedded_hash == source_hash("Written before the field")
    empty.refresh_from_db()
    assert empty.embedding_source_hash == empty.embedding_embedded_hash == ""
    assert not pending_rows(Snippet, get_embedding_field(Snippet)).exists()


def test_all_with_a_limit_sends_that_many_rows_and_leaves_the_rest_current(backlog, fake_gemini):
    call("semantic_embed", "testapp.Article")
    fake_gemini.reset()
    call("semantic_embed", "testapp.Article", "--batch-api", "--all", "--limit", "10", *FAST)
    (job,) = EmbeddingBatchJob.objects.all()
    assert (job.rows, job.embedded) == (10, 10)
    assert [pk for pk, _ in job.items] == [str(a.pk) for a in backlog[:10]]
    # Nothing was left pending for the sweep to embed at the interactive price.
    assert not pending_rows(Article, get_embedding_field(Article)).exists()
    embed_pending()
    assert fake_gemini.request_count == 0


def test_rows_being_submitted_are_left_to_the_submission(backlog, fake_gemini):
    """Until a job is recorded, neither a worker nor a second --batch-api run pays for its rows."""
    field = get_embedding_field(Article)
    arrived, go_on = threading.Semaphore(0), threading.Event()

    def hold_the_create_request():
        arrived.release()
        go_on.wait(30)

    fake_gemini.on_batch_request = hold_the_create_request
    runs: dict[str, list] = {}

    def submit(name):
        try:
            runs[name] = batch.run(Article, field, poll_interval=0.01)
        finally:
            connections.close_all()

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    try:
        assert arrived.acquire(timeout=30)  # the first run's texts are on their way, its job not yet recorded
        worker = Embedder(Article, field)
        worker.run()  # as the save hook's task or the sweep would
        assert (worker.outcome.embedded, worker.deferred, fake_gemini.request_count) == (0, True, 0)

        second = threading.Thread(target=submit, args=("second",))
        second.start()
        # The second run waits for the field (without the hold, its own create request arrives).
        deadline = time.monotonic() + 30
        while not (waiting_for_a_lock() or arrived.acquire(blocking=False)) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        go_on.set()
        first.join(30)
    second.join(30)

    (job,) = EmbeddingBatchJob.objects.all()
    assert ([j.name for j in runs["first"]], runs["second"]) == ([job.name], [])
    assert (job.rows, job.embedded) == (25, 25)
    assert len(fake_gemini.batch_requests) == 1 and fake_gemini.request_count == 0
    assert not pending_rows(Article, field).exists()


def waiting_for_a_lock():
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)")
        return cursor.fetchone()[0]


def my_advisory_locks():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        return cursor.fetchone()[0]


def test_a_run_deferred_to_a_submission_leaves_no_lock_behind(fake_gemini):
    """Deferred once, the same Embedder claims again when the submission is over (its
    passages after its rows): every lock it takes is let go, or the next submission
    and every worker would wait on it for good."""
    with suspend_embedding():
        row = LongRead.objects.create(title="Glaciers", body="Ice moves downhill under its own weight.")
    field = get_embedding_field(LongRead)
    embedder = Embedder(LongRead, field)
    submitter = Embedder(LongRead, field)
    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with submitter.held_for_batch():
                held.set()
                release.wait(30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(30)
        embedder.run()
        assert embedder.deferred and embedder.outcome.requests == 0
        assert embedder.outcome.stopped == DEFERRED  # said, not a silent "0 embedded"
    finally:
        release.set()
        thread.join(30)
    embedder.run([row.pk])
    assert not embedder.deferred and embedder.outcome.embedded == 1
    assert my_advisory_locks() == 0


def test_an_open_job_holds_the_rows_it_carries_not_every_row_between_them(backlog, fake_gemini):
    """A job of the first and the last row leaves a row edited in between to the worker, at once."""
    call("semantic_embed", "testapp.Article")
    fake_gemini.reset()
    field = get_embedding_field(Article)
    first, middle, last = backlog[0].pk, backlog[12].pk, backlog[24].pk
    Article.objects.filter(pk__in=[first, last]).update(body="Changed by a data fix")
    fake_gemini.batch_polls_until_done = 10_000
    (job,) = batch.submit(Article, field)
    assert [pk for pk, _ in job.items] == [str(first), str(last)]

    edited = Article.objects.get(pk=middle)
    edited.title = "Edited while the job ran"
    edited.save()
    assert fake_gemini.texts() == ["Edited while the job ran"]
    assert list(pending_rows(Article, field).values_list("pk", flat=True)) == []
    assert Article.objects.get(pk=middle).embedding is not None
    (status,) = json.loads(call("semantic_status", "testapp.Article", "--json")[0])
    assert (status["pending"], status["in_batch_jobs"]) == (2, 2)
    out, _ = call("semantic_status", "testapp.Article")
    assert Status.HELD.format(label=LABEL, rows=2, names=job.name) in out


def test_an_open_job_holds_its_rows_by_uuid_key(reports, fake_gemini):
    """Keys are stored as text in the job; a UUID key is held and others are not."""
    from tests.testapp.models import Report

    call("semantic_embed", "testapp.Report")
    field = get_embedding_field(Report)
    first, middle, last = sorted(row.pk for row in reports)
    Report.objects.filter(pk__in=[first, last]).update(body="A note revised by a data fix.")
    fake_gemini.batch_polls_until_done = 10_000
    (job,) = batch.submit(Report, field)
    assert sorted(pk for pk, _ in job.items) == sorted([str(first), str(last)])
    Report.objects.filter(pk=middle).update(body="A note revised while the job ran.")
    assert list(pending_rows(Report, field).values_list("pk", flat=True)) == [middle]


def test_jobs_are_sized_by_the_bytes_sent_not_characters(fake_gemini, monkeypatch):
    """google-genai escapes non-ASCII text in its JSON (six bytes a character): a job of
    Cyrillic text is sized by what is sent, so it stays under the inline request limit."""
    monkeypatch.setattr(batch, "MAX_JOB_BYTES", 300)
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Ж{i}".ljust(20, "Ж"), body="") for i in range(5))
    assert batch.sent_size("Ж" * 20) == 122
    call("semantic_embed", "testapp.Article", "--batch-api", *FAST)
    assert [job.rows for job in EmbeddingBatchJob.objects.order_by("submitted_at")] == [2, 2, 1]
    assert not Article.objects.filter(embedding__isnull=True).exists()
