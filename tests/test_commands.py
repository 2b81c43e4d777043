"""Management commands: semantic_embed, semantic_status, semantic_search, semantic_duplicates."""

import contextlib
import csv
import io
import json
import os
import re
import signal
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from semantic import batch, suspend_embedding
from semantic.backends.gemini import NO_KEY
from semantic.batch import NOT_DECLARED_HERE
from semantic.embedder import Embedder
from semantic.management.commands.semantic_duplicates import Command as Duplicates
from semantic.management.commands.semantic_embed import Command as Embed
from semantic.management.commands.semantic_evaluate import Command as Evaluate
from semantic.management.commands.semantic_search import Command as Search
from semantic.management.output import CLOSED_PIPE
from semantic.management.targets import APP_MIGRATIONS_DUE, BAD_TARGET, NO_FIELD, UNKNOWN_FIELD, UNKNOWN_MODEL
from semantic.models import EmbeddingFailure
from semantic.registry import get_embedding_field
from semantic.rows import pending_rows
from semantic.switch import NOT_REPLACING
from semantic.text import source_hash
from tests.commands import call, call_failing, manage
from tests.fake_gemini import BAD_KEY, api_error, fake_vector
from tests.testapp.models import Article, ArticleProxy, Bulletin, Entry, FeaturedArticle, Ledger, Note, Report

pytestmark = pytest.mark.django_db(transaction=True)


def test_embed_pending_rows_with_progress_lines(backlog, fake_gemini):
    out, _ = call("semantic_embed", "testapp.Article", "--batch-size", "10")
    assert fake_gemini.request_count == 3
    assert not Article.objects.filter(embedding__isnull=True).exists()
    assert (
        Embed.DONE.format(label="testapp.Article.embedding", embedded=25, cleared=0, failed=0, changed=0, requests=3)
        in out
    )
    assert "25/25 rows" in out  # not a terminal: plain lines
    out, _ = call("semantic_embed", "testapp.Article")
    assert Embed.NOTHING.format(label="testapp.Article.embedding") in out


def test_limit_then_resume(backlog, fake_gemini):
    call("semantic_embed", "testapp.Article.embedding", "--limit", "10")
    assert Article.objects.filter(embedding__isnull=False).count() == 10
    call("semantic_embed", "testapp.Article.embedding")  # carries on with the rest
    assert Article.objects.filter(embedding__isnull=False).count() == 25
    assert fake_gemini.request_count == 2


def hold_the_second_request(fake_gemini):
    """Events for stopping a command while its second request is in flight, whatever the
    machine's load: the fake server holds that request (``second_request`` set) until the
    test sets ``signalled``."""
    second_request, signalled = threading.Event(), threading.Event()

    def hold(record):
        if len(fake_gemini.requests) == 2:
            second_request.set()
            signalled.wait(timeout=60)

    fake_gemini.on_request = hold
    return second_request, signalled


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_run_keeps_written_batches(backlog, fake_gemini, sig):
    """Stopped while its second request is in flight, deterministically: the fake server
    holds that request until the signal has been sent, whatever the machine's load."""
    second_request, signalled = hold_the_second_request(fake_gemini)
    process = manage(fake_gemini, "semantic_embed", "testapp.Article", "--batch-size", "5")
    embedded = Article.objects.filter(embedding__isnull=False)
    assert second_request.wait(timeout=120), "the command never sent its second request"
    process.send_signal(sig)
    signalled.set()
    _, err = process.communicate(timeout=60)
    kept = set(embedded.values_list("pk", flat=True))
    assert len(kept) == 5, "the first batch is written, the one in flight is not"
    if sig == signal.SIGINT:
        assert process.returncode == 130, err
        assert Embed.RESUME_HINT in err
    else:
        assert process.returncode == -signal.SIGKILL

    fake_gemini.reset()
    out, _ = call("semantic_embed", "testapp.Article")
    assert embedded.count() == 25
    # The rerun sent only the rows the interrupted run had not written.
    sent = set(fake_gemini.texts())
    assert sent == {a.title for a in backlog if a.pk not in kept}
    assert f"{25 - len(kept)} embedded" in out


def test_all_re_embeds_current_rows(backlog, fake_gemini):
    call("semantic_embed")
    fake_gemini.reset()
    call("semantic_embed", "testapp.Article", "--all")
    assert fake_gemini.request_count == 1
    assert len(fake_gemini.texts()) == 25


def test_all_with_a_limit_re_embeds_that_many_rows_and_leaves_the_rest_current(backlog, fake_gemini):
    call("semantic_embed")
    fake_gemini.reset()
    out, _ = call("semantic_embed", "testapp.Article", "--all", "--limit", "10")
    assert sorted(fake_gemini.texts()) == sorted(a.title for a in backlog[:10])
    assert "10 embedded" in out
    assert not pending_rows(Article, get_embedding_field(Article)).exists()  # nothing left for the sweep

    call("semantic_embed", "testapp.Article", "--all", "--limit", "5", "--queue")
    assert pending_rows(Article, get_embedding_field(Article)).count() == 5


def test_failed_retries_only_failed_rows(backlog, fake_gemini):
    label = "testapp.Article.embedding"
    fake_gemini.reject_marker = "number 3"
    _, err = call("semantic_embed", "testapp.Article")  # refused for good: said, and no exit status 1
    assert Embed.REFUSED.format(rows=1, labels=label) in err
    assert EmbeddingFailure.objects.count() == 1
    fake_gemini.reset()
    _, err = call("semantic_embed", "testapp.Article")  # permanent: not retried by default
    assert fake_gemini.request_count == 0
    fake_gemini.reject_marker = "number 3"
    _, err = call("semantic_embed", "testapp.Article", "--failed")  # refused again: no exit status 1 either
    assert Embed.REFUSED.format(rows=1, labels=label) in err and fake_gemini.request_count == 1
    fake_gemini.reset()
    out, _ = call("semantic_embed", "testapp.Article", "--failed")
    assert fake_gemini.texts() == ["Backlog article number 3"]
    assert not EmbeddingFailure.objects.exists()


def test_a_run_whose_only_failure_is_a_text_refused_for_good_exits_0_and_says_so(backlog, fake_gemini):
    """No rerun cures a refused text: a script that alerted or retried on it would do so on every run."""
    fake_gemini.reject_marker = "number 3"
    process = manage(fake_gemini, "semantic_embed", "testapp.Article")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "24 embedded" in out and "1 failed" in out
    assert Embed.REFUSED.format(rows=1, labels="testapp.Article.embedding") in err
    assert Embed.FAILED_HINT not in err  # --failed would send the same text to the same refusal
    assert EmbeddingFailure.objects.get().permanent


def test_a_row_failed_for_now_exits_1(backlog, fake_gemini):
    """A failure a retry may cure (a 429 asking to wait longer than MAX_BACKOFF: the run does
    not stop, its rows wait) is exit status 1, so a cron job sees it."""
    fake_gemini.fail_next(429, retry_after="120")
    _, err, error = call_failing("semantic_embed", "testapp.Article")
    assert error == Embed.SOME_FAILED.format(rows=25, labels="testapp.Article.embedding")
    assert Embed.FAILED_HINT in err and Embed.REFUSED.split("{")[0] not in err
    assert not EmbeddingFailure.objects.filter(permanent=True).exists()


def test_rows_waiting_to_retry_a_failure_are_named_and_left_out_of_all_as_it_counts(
    backlog, fake_gemini, semantic_settings
):
    """After an outage: the rows of the batch that failed wait for their retry time, also for --all
    (which counts only what it sends), and every run says so and how to retry them now."""
    semantic_settings(MAX_ATTEMPTS=1)
    fake_gemini.fail_every(503, body=api_error(503, "The service is currently unavailable.", "UNAVAILABLE"))
    call_failing("semantic_embed", "testapp.Article", "--batch-size", "3")
    fake_gemini.reset()
    label = "testapp.Article.embedding"
    next_retry = EmbeddingFailure.objects.order_by("retry_at").first().retry_at
    waiting = Embed.WAITING.format(
        label=label, rows=3, when=Embed.WAITING_UNTIL.format(time=batch.shown_time(next_retry))
    )
    out, err = call("semantic_embed", "testapp.Article")
    assert "22 embedded" in out and waiting in err
    out, err = call("semantic_embed", "testapp.Article")
    assert Embed.NOTHING.format(label=label) in out and waiting in err
    fake_gemini.reset()
    out, err = call("semantic_embed", "testapp.Article", "--all")
    assert "22/22 rows" in out and len(fake_gemini.texts()) == 22 and waiting in err
    (status,) = json.loads(call("semantic_status", "testapp.Article", "--json")[0])
    assert (status["pending"], status["failed"], status["oldest_pending_seconds"]) == (0, 3, None)


def test_dry_run_counts_and_prices_without_writing(backlog, fake_gemini):
    out, _ = call("semantic_embed", "testapp.Article", "--dry-run")
    characters = sum(len(a.title) for a in backlog)  # the empty body's separator is stripped, as sent
    assert (
        Embed.DRY_RUN.split("{cost}")[0].format(
            label="testapp.Article.embedding", rows=25, characters=characters, tokens=-(-characters // 4)
        )
        in out
    )
    assert "estimated cost USD" in out
    assert fake_gemini.request_count == 0
    assert not Article.objects.filter(embedding__isnull=False).exists()


def test_queue_hands_chunks_to_django_q(backlog, fake_gemini, semantic_settings):
    from django_q.models import OrmQ

    out, _ = call("semantic_embed", "testapp.Article", "--queue", "--batch-size", "7")
    assert Embed.QUEUED.format(label="testapp.Article.embedding", rows=25, tasks=1) in out
    (queued,) = OrmQ.objects.all()
    assert queued.task["func"] == "semantic.tasks.embed_chunk"
    assert queued.task["args"][1:] == ("embedding", sorted(a.pk for a in backlog), 7)
    assert fake_gemini.request_count == 0
    from semantic.tasks import embed_chunk

    pks = list(Article.objects.values_list("pk", flat=True)[:5])
    assert embed_chunk("testapp.Article", "embedding", pks)["embedded"] == 5
    assert Article.objects.filter(embedding__isnull=False).count() == 5  # exactly the chunk


def test_queue_chunks_are_whole_requests_of_about_256_rows(backlog, fake_gemini, semantic_settings):
    """Small chunks, so a cluster's workers share a backfill evenly instead of one
    finishing a big last chunk alone; whole requests, so no request goes half full."""
    from django_q.models import OrmQ

    from semantic.backfill import chunk_size

    assert [chunk_size(n) for n in (2, 64, 100, 256, 300)] == [256, 256, 200, 256, 300]
    out, _ = call("semantic_embed", "testapp.Article", "--queue", "--batch-size", "12")
    assert Embed.QUEUED.format(label="testapp.Article.embedding", rows=25, tasks=1) in out
    (queued,) = OrmQ.objects.all()
    assert len(queued.task["args"][2]) == 25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nonsense"], BAD_TARGET.format(target="nonsense")),
        (["testapp.Nope"], UNKNOWN_MODEL.split("{known}")[0].format(label="testapp.Nope")),
        (["semantic.EmbeddingFailure"], NO_FIELD.format(label="semantic.EmbeddingFailure")),
        (
            ["testapp.Document.nope"],
            UNKNOWN_FIELD.format(label="testapp.Document", name="nope", names="summary, content"),
        ),
        (["testapp.Article", "--batch-size", "-1"], "--batch-size must be a positive number."),
        (["testapp.Article", "--limit", "0"], "--limit must be a positive number."),
    ],
)
def test_embed_bad_arguments(args, message):
    with pytest.raises(CommandError) as info:
        call("semantic_embed", *args)
    assert message in str(info.value)


def test_status_table_and_json(backlog, fake_gemini):
    call("semantic_embed", "testapp.Article", "--limit", "5")
    out, _ = call("semantic_status", "testapp.Article")
    assert out.splitlines()[0].split()[:3] == ["field", "total", "embedded"]
    row = next(line for line in out.splitlines() if line.startswith("testapp.Article.embedding"))
    assert row.split()[1:4] == ["25", "5", "20"]
    data = json.loads(call("semantic_status", "--json")[0])
    article = next(r for r in data if r["model"] == "testapp.Article")
    assert (article["total"], article["embedded"], article["pending"]) == (25, 5, 20)
    assert 0 <= article["oldest_pending_seconds"] < 60 and article["oldest_pending_since"]
    header = out.splitlines()[0]
    assert "oldest pending" in header and row.split()[-2] in ("0s", "1s", "2s", "3s")
    assert {r["model"] for r in data} >= {"testapp.Article", "testapp.Document", "questions.Question"}


def test_status_json_gives_the_oldest_pending_time_with_its_offset_under_use_tz_false(backlog, settings):
    """Naive local times (USE_TZ = False, TIME_ZONE 14 hours ahead of UTC) carry their offset, so
    a monitor reading the ISO 8601 string gets the instant the row started waiting."""
    settings.USE_TZ, settings.TIME_ZONE = False, "Pacific/Kiritimati"
    data = json.loads(call("semantic_status", "testapp.Article", "--json")[0])
    since = datetime.fromisoformat(data[0]["oldest_pending_since"])
    assert since.utcoffset() == timedelta(hours=14)
    waited = (datetime.now(UTC) - since).total_seconds()
    assert 0 <= waited < 60 and abs(waited - data[0]["oldest_pending_seconds"]) <= 2


def test_search_prints_nearest_rows(fake_gemini):
    cache.clear()
    Article.objects.create(title="reset my password", body="")
    Article.objects.create(title="export invoices", body="")
    out, _ = call("semantic_search", "testapp.Article", "password reset", "-k", "1")
    header, *lines = out.splitlines()
    assert header.split() == ["similarity", "id", "text"]
    assert len(lines) == 1 and "reset my password" in lines[0]
    with pytest.raises(CommandError, match="several EmbeddingFields"):
        call("semantic_search", "testapp.Document", "x")
    with pytest.raises(CommandError, match="-k must be at least 1"):
        call("semantic_search", "testapp.Article", "x", "-k", "0")
    Article.objects.all().delete()
    out, _ = call("semantic_search", "testapp.Article", "password")
    assert out.strip() == Search.NO_RESULTS


def test_a_duplicate_search_the_statement_timeout_cancels_is_a_command_error_saying_what_to_do(
    fake_gemini, statement_timeout_2s
):
    """A role's statement_timeout (managed services set one): the command ends with what to do, not
    a traceback. Another connection holds the table, so the search's first statement waits out
    the time-out whatever the machine."""
    import psycopg
    from django.db import connection

    Article.objects.create(title="reset my account password", body="")
    with psycopg.connect(**connection.get_connection_params()) as other:
        other.execute(f"LOCK TABLE {Article._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(CommandError) as info:
            call("semantic_duplicates", "testapp.Article", "--threshold", "0.5")
        other.rollback()
    assert str(info.value) == Duplicates.CANCELED.format(label="testapp.Article", timeout="2s")


def test_duplicates_export_csv_json_and_file(fake_gemini, tmp_path):
    Article.objects.create(title="reset my account password", body="")
    Article.objects.create(title="reset the password of my account", body="")
    Article.objects.create(title="dark mode", body="")
    out, _ = call("semantic_duplicates", "testapp.Article", "--threshold", "0.5")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["text"] for r in rows} == {"reset my account password", "reset the password of my account"}
    assert {r["group"] for r in rows} == {"1"}
    target = tmp_path / "dups.json"
    out, _ = call(
        "semantic_duplicates",
        "testapp.Article.embedding",
        "--threshold",
        "0.5",
        "--format",
        "json",
        "--output",
        str(target),
    )
    assert Duplicates.WROTE.format(groups=1, rows=2, output=target) in out
    assert len(json.loads(target.read_text())) == 2
    for bad in ("2", "abc"):
        with pytest.raises(CommandError, match="threshold"):
            call("semantic_duplicates", "testapp.Article", "--threshold", bad)


# -- models that inherit the field ------------------------------------------------------------------


@pytest.fixture
def inherited(fake_gemini):
    """A plain Article and a FeaturedArticle (a multi-table child of Article), neither embedded."""
    with suspend_embedding():
        plain = Article.objects.create(title="a plain article", body="")
        featured = FeaturedArticle.objects.create(title="a featured article", body="", blurb="new")
    return plain.pk, featured.pk


def embedded(pk):
    return Article.objects.get(pk=pk).embedding is not None


def test_naming_a_multi_table_child_embeds_and_counts_only_its_rows(inherited, fake_gemini):
    from django_q.models import OrmQ

    plain, featured = inherited
    label = "testapp.FeaturedArticle.embedding"
    out, _ = call("semantic_embed", "testapp.FeaturedArticle", "--dry-run")
    assert out.startswith(f"{label}: 1 rows, ")  # the plain article is not counted
    out, _ = call("semantic_embed", "testapp.FeaturedArticle")
    assert "1/1 rows" in out
    assert Embed.DONE.format(label=label, embedded=1, cleared=0, failed=0, changed=0, requests=1) in out
    assert fake_gemini.texts() == ["a featured article"]
    assert embedded(featured) and not embedded(plain)
    assert call("semantic_embed", "testapp.FeaturedArticle")[0] == Embed.NOTHING.format(label=label) + "\n"

    # --all takes every row of the child, and only those.
    out, _ = call("semantic_embed", "testapp.FeaturedArticle", "--all")
    assert "1/1 rows" in out and not embedded(plain)
    out, _ = call("semantic_embed", "testapp.FeaturedArticle", "--all", "--queue")
    assert Embed.QUEUED.format(label=label, rows=1, tasks=1) in out
    (queued,) = OrmQ.objects.all()
    assert queued.task["args"][:3] == ("testapp.FeaturedArticle", "embedding", [featured])
    assert fake_gemini.texts() == ["a featured article"] * 2

    # A proxy's rows are all of its table's: the plain article, and the featured one queued above.
    out, _ = call("semantic_embed", "testapp.ArticleProxy")
    assert "testapp.ArticleProxy.embedding: 2/2 rows" in out and embedded(plain)


def test_retrying_a_childs_failed_rows_leaves_the_parents_others(inherited, fake_gemini):
    plain, featured = inherited
    for pk in (plain, featured):  # failures are recorded under the model that declares the field
        EmbeddingFailure.objects.create(
            model_label="testapp.Article", field_name="embedding", object_pk=str(pk), error="e"
        )
    out, _ = call("semantic_embed", "testapp.FeaturedArticle", "--failed")
    assert "testapp.FeaturedArticle.embedding: 1/1 rows" in out
    assert embedded(featured) and not embedded(plain)
    assert list(EmbeddingFailure.objects.values_list("object_pk", "retry_at")) == [(str(plain), None)]


def test_the_batch_api_refuses_a_model_that_inherits_the_field(inherited, fake_gemini):
    for model in (FeaturedArticle, ArticleProxy):
        with pytest.raises(CommandError) as info:
            call("semantic_embed", model._meta.label, "--batch-api")
        assert str(info.value) == NOT_DECLARED_HERE.format(
            owner="testapp.Article", field="embedding", label=model._meta.label
        )
    assert fake_gemini.request_count == 0


# -- what commands print, and what they refuse -------------------------------------------------

HOSTILE = "evil\x1b]0;owned\x07 title\x1b[2J\x9b31m\x08end"


def test_search_escapes_control_characters_in_printed_text(fake_gemini):
    cache.clear()
    Article.objects.create(title=HOSTILE, body="")
    out, _ = call("semantic_search", "testapp.Article", "evil title")
    assert not any(c in out for c in "\x1b\x07\x9b\x08")
    assert r"evil\x1b]0;owned\x07 title\x1b[2J\x9b31m\x08end" in out
    # A key is text too when it is a code or a slug that users chose.
    Entry.objects.create(code="k\x1b]0;owned\x07", text="evil title")
    out, _ = call("semantic_search", "testapp.Entry", "evil title")
    assert not any(c in out for c in "\x1b\x07") and r"#k\x1b]0;owned\x07" in out, out


def test_duplicates_csv_is_safe_in_terminals_and_spreadsheets(fake_gemini, tmp_path):
    titles = ['=HYPERLINK("http://x.example","click") reset password', "+1 reset password", HOSTILE + " reset password"]
    titles += ["-1 reset password", "@SUM(1) reset password", "\treset password", "\rreset password"]
    for title in titles:
        Article.objects.create(title=title, body="")
    out, _ = call("semantic_duplicates", "testapp.Article", "--threshold", "0.3")
    assert not any(c in out for c in "\x1b\x07\x9b\x08\t")
    texts = {r["text"] for r in csv.DictReader(io.StringIO(out))}
    assert texts == {
        '\'=HYPERLINK("http://x.example","click") reset password',
        "'+1 reset password",
        r"evil\x1b]0;owned\x07 title\x1b[2J\x9b31m\x08end reset password",
        "'-1 reset password",
        "'@SUM(1) reset password",
        r"'\x09reset password",
        r"'\x0dreset password",
    }
    target = tmp_path / "dups.csv"
    call("semantic_duplicates", "testapp.Article", "--threshold", "0.3", "--output", str(target))
    assert {r["text"] for r in csv.DictReader(io.StringIO(target.read_text()))} == texts


def test_topics_csv_is_safe_in_terminals_and_spreadsheets_and_json_keeps_the_text(fake_gemini):
    titles = [f"{start}{HOSTILE} reset password" for start in "=+-@"]
    for title in titles:
        Article.objects.create(title=title, body="")
    out, _ = call("semantic_topics", "testapp.Article", "--k", "1")
    assert not any(c in out for c in "\x1b\x07\x9b\x08")
    typical = [row["typical_text"] for row in csv.DictReader(io.StringIO(out))]
    escaped = r"evil\x1b]0;owned\x07 title\x1b[2J\x9b31m\x08end reset password"
    assert len(typical) == 3 and set(typical) <= {f"'{start}{escaped}" for start in "=+-@"}, typical
    out, _ = call("semantic_topics", "testapp.Article", "--k", "1", "--format", "json")
    assert not any(c in out for c in "\x1b\x07\x9b\x08")
    (topic,) = json.loads(out)
    assert {row["text"] for row in topic["typical"]} <= set(titles) and len(topic["typical"]) == 3


def test_duplicates_json_keeps_the_text_and_escapes_controls(fake_gemini):
    Article.objects.create(title=HOSTILE + " reset password", body="")
    Article.objects.create(title="=1+1 reset password", body="")
    out, _ = call("semantic_duplicates", "testapp.Article", "--threshold", "0.3", "--format", "json")
    assert not any(c in out for c in "\x1b\x07\x9b\x08")
    assert {r["text"] for r in json.loads(out)} == {HOSTILE + " reset password", "=1+1 reset password"}


def test_duplicates_json_writes_uuid_keys_as_strings(fake_gemini):
    first = Report.objects.create(title="first", body="reset my account password")
    second = Report.objects.create(title="second", body="reset the password of my account")
    out, _ = call("semantic_duplicates", "testapp.Report", "--threshold", "0.5", "--format", "json")
    pairs = {(r["pk"], r["nearest_pk"]) for r in json.loads(out)}
    assert pairs == {(str(first.pk), str(second.pk)), (str(second.pk), str(first.pk))}


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_a_reader_that_stops_early_ends_the_command_quietly(fake_gemini, unbuffered):
    """``manage.py semantic_search ... | head -1``: the pipe is closed before the command writes.
    Buffered (no PYTHONUNBUFFERED), a short output is written only when the command is done."""
    Article.objects.create(title="reset my password", body="")
    read, write = os.pipe()
    os.close(read)
    env = {"PYTHONUNBUFFERED": unbuffered}
    process = manage(fake_gemini, "semantic_search", "testapp.Article", "password", env=env, stdout=write, text=True)
    os.close(write)
    _, err = process.communicate(timeout=120)
    assert process.returncode == CLOSED_PIPE, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_call_command_hands_a_closed_pipe_to_its_caller(fake_gemini):
    """Python code calling a command gets a BrokenPipeError, not a SystemExit that ends its process."""
    Article.objects.create(title="reset my password", body="")
    read, write = os.pipe()
    os.close(read)
    closed = open(write, "w", buffering=1)  # noqa: SIM115 - closed below, where its last flush fails
    try:
        with pytest.raises(BrokenPipeError):
            call_command("semantic_search", "testapp.Article", "password", stdout=closed)
    finally:
        with contextlib.suppress(BrokenPipeError):
            closed.close()


def test_exports_to_standard_output_are_utf_8_whatever_the_locale(fake_gemini):
    Article.objects.create(title="Größe reset my account password", body="")
    Article.objects.create(title="Größe reset the password of my account", body="")
    ascii_locale = {"PYTHONIOENCODING": "ascii"}
    for export in ("csv", "json"):
        args = ("semantic_duplicates", "testapp.Article", "--threshold", "0.5", "--format", export)
        process = manage(fake_gemini, *args, env=ascii_locale, text=False)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert "Größe reset my account password" in out.decode("utf-8")
    # Printed for people, a title the stream cannot hold is shown escaped.
    process = manage(fake_gemini, "semantic_search", "testapp.Article", "password", env=ascii_locale)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert r"Gr\xf6\xdfe reset" in out


@pytest.mark.parametrize("where", ["missing-directory/dups.csv", "."], ids=["no-directory", "a-directory"])
def test_duplicates_unwritable_output_fails_before_any_work(fake_gemini, tmp_path, where):
    Article.objects.create(title="reset my password", body="")
    output = tmp_path / where
    with CaptureQueriesContext(connection) as queries, pytest.raises(CommandError) as info:
        call("semantic_duplicates", "testapp.Article", "--output", str(output))
    assert str(info.value).startswith(Duplicates.UNWRITABLE.split("{")[0])
    assert str(output) in str(info.value)
    assert len(queries) == 0


def test_duplicates_output_file_is_left_alone_when_the_export_fails(fake_gemini, tmp_path):
    target = tmp_path / "dups.csv"
    target.write_text("kept\n")
    with pytest.raises(CommandError):
        call("semantic_duplicates", "testapp.Document", "--output", str(target))  # two fields: refused
    assert target.read_text() == "kept\n"
    new = tmp_path / "new.csv"
    with pytest.raises(CommandError):
        call("semantic_duplicates", "testapp.Document", "--output", str(new))
    assert not new.exists()


@pytest.mark.parametrize(
    "text", ["", "   ", "\x01\x02", "\u200b\ufeff\u200e"], ids=["empty", "spaces", "controls", "invisible"]
)
def test_search_refuses_an_empty_query(fake_gemini, text):
    with pytest.raises(CommandError) as info:
        call("semantic_search", "testapp.Article", text)
    assert str(info.value) == Search.EMPTY_QUERY
    assert fake_gemini.request_count == 0


def test_search_says_when_the_api_is_unreachable(fake_gemini):
    cache.clear()
    fake_gemini.fail_next(503, times=50)
    with pytest.raises(CommandError) as info:
        call("semantic_search", "testapp.Article", "password reset")
    assert str(info.value).startswith(Search.UNAVAILABLE.split("{")[0])
    assert "503" in str(info.value)


def test_search_refuses_a_text_that_arrived_undecodable(fake_gemini):
    """Under an ASCII locale without Python's UTF-8 mode, "Größe" arrives as "Gr\\udcc3\\udcb6e":
    refused with what to do, never embedded and searched for."""
    Article.objects.create(title="Größe der Rechnung", body="")
    fake_gemini.reset()
    ascii_only = {"LC_ALL": "C", "PYTHONUTF8": "0"}
    process = manage(fake_gemini, "semantic_search", "testapp.Article", "Größe der Rechnung", env=ascii_only)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1 and out == ""
    assert err.strip() == "CommandError: " + Search.UNDECODABLE.format(encoding="ascii")
    assert fake_gemini.request_count == 0


def test_search_errors_print_one_line_without_a_traceback(fake_gemini):
    fake_gemini.fail_next(503, times=50)
    process = manage(fake_gemini, "semantic_search", "testapp.Article", "password reset")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "Traceback" not in err and err.startswith("CommandError: " + Search.UNAVAILABLE.split("{")[0])


def test_switch_on_a_field_that_replaces_nothing_is_refused_before_embedding(backlog, fake_gemini):
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Article.embedding", "--switch")
    assert str(info.value) == NOT_REPLACING.format(label="testapp.Article", field="embedding")
    assert fake_gemini.request_count == 0
    assert not Article.objects.filter(embedding__isnull=False).exists()


def quiet(*args):
    """``call_command(*args, verbosity=0)``; returns what it wrote to stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, verbosity=0, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_embed_at_verbosity_zero_prints_nothing_but_problems(backlog, fake_gemini):
    assert quiet("semantic_embed", "testapp.Article", "--batch-size", "10") == ("", "")
    assert not Article.objects.filter(embedding__isnull=True).exists()
    assert quiet("semantic_embed", "testapp.Article") == ("", "")  # nothing to embed
    assert call("semantic_embed", "testapp.Article", "--dry-run", "-v", "0") == ("", "")
    assert quiet("semantic_embed", "testapp.Article", "--all", "--queue") == ("", "")
    # A run that stops still says why, on stderr.
    Article.objects.update(title="changed behind save()")
    fake_gemini.fail_every(400, body=BAD_KEY)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=re.escape(Embed.INCOMPLETE.format(labels="testapp.Article.embedding"))):
        call_command("semantic_embed", "testapp.Article", verbosity=0, stdout=out, stderr=err)
    assert out.getvalue() == ""
    assert err.getvalue().startswith(Embed.STOPPED.split("{reason}")[0].format(label="testapp.Article.embedding"))


def test_embed_stops_when_the_api_keeps_failing_and_exits_1(backlog, fake_gemini, semantic_settings):
    """A cron job or deploy script sees that the rows were not embedded: the run stopped after one
    batch spent its attempts, and the other rows wait, with no failure records, for the next run."""
    semantic_settings(MAX_ATTEMPTS=2)
    fake_gemini.fail_every(503, body=api_error(503, "The service is currently unavailable.", "UNAVAILABLE"))
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("semantic_embed", "testapp.Article", "--batch-size", "10", stdout=out, stderr=err)
    assert str(info.value) == Embed.INCOMPLETE.format(labels="testapp.Article.embedding")
    assert fake_gemini.request_count == 2
    error = EmbeddingFailure.objects.first().error
    reason = Embedder.API_FAILING.format(error=error, attempts=2)
    assert Embed.STOPPED.format(label="testapp.Article.embedding", reason=reason) in err.getvalue()
    assert EmbeddingFailure.objects.count() == 10
    assert pending_rows(Article, get_embedding_field(Article)).count() == 15  # 25 less the 10 that wait to retry


def test_other_commands_that_report_are_quiet_at_verbosity_zero(fake_gemini, tmp_path):
    Article.objects.create(title="reset my password", body="")
    Article.objects.create(title="reset the password", body="")
    target = tmp_path / "dups.csv"
    assert quiet("semantic_duplicates", "testapp.Article", "--threshold", "0.3", "--output", str(target)) == ("", "")
    assert len(list(csv.DictReader(io.StringIO(target.read_text())))) == 2
    topics = tmp_path / "topics.csv"
    assert quiet("semantic_topics", "testapp.Article", "--k", "1", "--output", str(topics)) == ("", "")
    assert "reset" in topics.read_text()
    assert quiet("semantic_prepare_model") == ("", "")  # Gemini: nothing to prepare
    assert quiet("semantic_remove_stale", "--noinput") == ("", "")  # nothing stale
    EmbeddingFailure.objects.create(model_label="gone.Model", field_name="embedding", object_pk="1", error="e")
    assert quiet("semantic_remove_stale", "--noinput") == ("", "")
    assert not EmbeddingFailure.objects.exists()
    # Printing the results is what these are for: -v 0 leaves them.
    assert "reset my password" in quiet("semantic_search", "testapp.Article", "password")[0]
    assert "testapp.Article" in quiet("semantic_status")[0]


# -- score columns ---------------------------------------------------------------------------------


def opposite_of(word, dimensions):
    """A word whose fake vector points away from ``word``'s: a negative similarity."""
    target = fake_vector(word, dimensions)
    for n in range(10_000):
        candidate = f"w{n}"
        if sum(x * y for x, y in zip(target, fake_vector(candidate, dimensions))) < 0:
            return candidate
    raise AssertionError("no opposite word")


def parse(out):
    """semantic_search's table as (similarity, text) pairs, after checking its header."""
    header, *lines = out.splitlines()
    assert header.split() == ["similarity", "id", "text"]
    return [(float(line.split(None, 2)[0]), line.split(None, 2)[2]) for line in lines]


def test_search_prints_similarity_and_leaves_out_rows_below_the_minimum(fake_gemini):
    cache.clear()
    opposite = opposite_of("alpha", get_embedding_field(Article).dimensions)
    Article.objects.create(title="alpha", body="")
    Article.objects.create(title="alpha beta gamma", body="")
    Article.objects.create(title=opposite, body="")
    out, _ = call("semantic_search", "testapp.Article", "alpha")
    assert parse(out) == [(1.0, "alpha"), (round(1 / 3**0.5, 3), "alpha beta gamma")]  # not the opposite row

    out, _ = call("semantic_search", "testapp.Article", "alpha", "--min-similarity", "-1")
    score, text = parse(out)[-1]
    assert text == opposite and score < 0

    out, _ = call("semantic_search", "testapp.Article", "alpha", "--min-similarity", "0.99")
    assert parse(out) == [(1.0, "alpha")]
    out, _ = call("semantic_search", "testapp.Article", "zeta", "--min-similarity", "0.5")
    assert out.strip() == Search.NO_MATCH.format(min_similarity=0.5)
    with pytest.raises(CommandError, match="min.similarity"):
        call("semantic_search", "testapp.Article", "alpha", "--min-similarity", "2")


def test_duplicates_export_has_a_similarity_column(fake_gemini):
    first = Article.objects.create(title="reset my account password", body="")
    second = Article.objects.create(title="reset the password of my account", body="")
    third = Article.objects.create(title="reset my account password now", body="")
    pairs = {frozenset((a.pk, b.pk)): s for a, b, s in Article.objects.duplicates(0.5)}
    out, _ = call("semantic_duplicates", "testapp.Article", "--threshold", "0.5")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["group", "pk", "similarity", "nearest_pk", "text"]
    for row in rows:
        pk, nearest = int(row["pk"]), int(row["nearest_pk"])
        best = max(s for pair, s in pairs.items() if pk in pair)
        assert float(row["similarity"]) == round(best, 4) == round(pairs[frozenset((pk, nearest))], 4)
    assert {int(r["pk"]) for r in rows} == {first.pk, second.pk, third.pk}
    records = json.loads(call("semantic_duplicates", "testapp.Article", "--threshold", "0.5", "--format", "json")[0])
    assert {(r["pk"], r["similarity"]) for r in records} == {(int(r["pk"]), float(r["similarity"])) for r in rows}


def test_search_duplicates_and_evaluate_read_the_rows_the_default_manager_gives(fake_gemini, tmp_path):
    """A soft delete's manager (a plain one) hides a row: the commands leave it out, as
    ``similar_to()``, the admin and semantic_topics do; it is still embedded."""
    live = Bulletin.objects.create(title="reset my account password")
    deleted = Bulletin.objects.create(title="reset my account password now", deleted=True)
    other = Bulletin.objects.create(title="reset the password of my account")
    assert Bulletin.search.filter(embedding__isnull=True).count() == 0

    out, _ = call("semantic_search", "testapp.Bulletin", "reset my account password now")
    assert [text for _, text in parse(out)] == [live.title, other.title]

    rows = list(csv.DictReader(io.StringIO(call("semantic_duplicates", "testapp.Bulletin", "--threshold", "0.5")[0])))
    assert {int(row["pk"]) for row in rows} == {live.pk, other.pk}
    assert str(deleted.pk) not in {row["nearest_pk"] for row in rows}

    queries, qrels = tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"
    queries.write_text(json.dumps({"_id": "q1", "text": "password"}) + "\n")
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq1\t{live.pk}\t1\n")
    files = ["--queries", str(queries), "--qrels", str(qrels)]
    out, _ = call("semantic_evaluate", "testapp.Bulletin", *files, "--methods", "meaning")
    assert Evaluate.SUMMARY.format(queries=1, rows=2, label="testapp.Bulletin") in out


def test_dry_run_with_the_local_model_says_it_is_free(fake_gemini, semantic_settings):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    with suspend_embedding():
        Note.objects.create(text="A man is playing a guitar.")
    out, _ = call("semantic_embed", "testapp.Note", "--dry-run")
    assert out.strip().endswith(Embed.FREE + ".")
    assert "testapp.Note.embedding: 1 rows" in out


def test_dry_run_counts_the_rows_and_characters_the_run_sends(fake_gemini, semantic_settings):
    """Text is cleaned as the worker cleans it: whitespace around it is not sent, and a row
    with nothing else is not sent at all; the run calls those "without text"."""
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    texts = ["  A man is playing a guitar.  ", "Two dogs run.\n", "   ", "\t\n"]
    with suspend_embedding():
        for text in texts:
            Note.objects.create(text=text)
    out, _ = call("semantic_embed", "testapp.Note", "--dry-run")
    characters = len("A man is playing a guitar.") + len("Two dogs run.")
    label = "testapp.Note.embedding"
    tokens = -(-characters // 4)
    summary = Embed.DRY_RUN.format(label=label, rows=2, characters=characters, tokens=tokens, cost=Embed.FREE)
    assert out.splitlines() == [summary, Embed.DRY_RUN_WITHOUT_TEXT.format(label=label, rows=2)]
    out, _ = call("semantic_embed", "testapp.Note")
    assert f"{label}: 2 embedded, 2 without text, 0 failed" in out


@pytest.mark.django_db(transaction=True)
def test_commands_say_to_migrate_when_this_apps_tables_are_behind(backlog):
    """After an upgrade whose migrations were not applied yet: a clear error, not a missing column."""
    from django.core.management import call_command
    from django.db.migrations.loader import MigrationLoader

    latest = max(name for app, name in MigrationLoader(connection).graph.leaf_nodes() if app == "semantic")
    previous = max(
        name for app, name in MigrationLoader(connection).disk_migrations if app == "semantic" and name < latest
    )
    call_command("migrate", "semantic", previous, verbosity=0)
    try:
        for command in ("semantic_embed", "semantic_status"):
            with pytest.raises(CommandError) as info:
                call(command, "testapp.Article")
            assert str(info.value) == APP_MIGRATIONS_DUE.format(count=1, database="default", names=latest)
    finally:
        call_command("migrate", "semantic", verbosity=0)
    assert "embedded" in call("semantic_status", "testapp.Article")[0]


@pytest.mark.django_db(transaction=True)
def test_commands_run_on_a_database_built_without_migrations(backlog):
    """A test database made with TEST {"MIGRATE": False} has the tables but no django_migrations."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_migrations RENAME TO django_migrations_elsewhere")
    try:
        out, _ = call("semantic_embed", "testapp.Article")
        assert "25 embedded" in out
        assert "testapp.Article.embedding" in call("semantic_status", "testapp.Article")[0]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE django_migrations_elsewhere RENAME TO django_migrations")


def test_without_a_gemini_key_the_run_reports_nothing_sent(fake_gemini, semantic_settings, monkeypatch):
    """README: no API key for Gemini, "nothing is sent; the run stops saying which setting to
    set": no request counted, no row visited, and no model-change advice for a missing key."""
    with suspend_embedding():
        Note.objects.bulk_create(Note(text=f"note {i}") for i in range(2))
    call("semantic_embed", "testapp.Note")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    semantic_settings(API_KEY=None, MODEL="gemini-embedding-next")  # the rows' vectors are another model's now
    sent = fake_gemini.request_count
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("semantic_embed", "--all", "testapp.Note", stdout=out, stderr=err)
    assert str(info.value) == Embed.INCOMPLETE.format(labels="testapp.Note.embedding")
    label = "testapp.Note.embedding"
    assert out.getvalue().splitlines() == [
        Embed.DONE.format(label=label, embedded=0, cleared=0, failed=0, changed=0, requests=0)
    ]
    assert err.getvalue().splitlines() == [Embed.STOPPED.format(label=label, reason=NO_KEY)]
    assert fake_gemini.request_count == sent


def test_rehash_embeds_only_the_rows_whose_text_from_python_changed(fake_gemini, monkeypatch):
    """The code of a method the field reads changed: no migration, no save, and yet some rows' text did."""
    from tests.testapp import models as testapp_models

    ledgers = [Ledger.objects.create(text=f"entry {i} {'invoice' if i % 3 == 0 else 'receipt'}") for i in range(9)]
    out, _ = call("semantic_embed", "testapp.Ledger")
    assert Embed.NOTHING.format(label="testapp.Ledger.embedding") in out
    fake_gemini.reset()

    monkeypatch.setattr(testapp_models, "LEDGER_TAGS", {"invoice": "(billing)"})
    out, _ = call("semantic_embed", "testapp.Ledger")
    assert Embed.NOTHING.format(label="testapp.Ledger.embedding") in out  # why --rehash is needed
    out, _ = call("semantic_embed", "testapp.Ledger", "--rehash")
    assert Embed.REHASHED.format(label="testapp.Ledger.embedding", rows=9, changed=3) in out
    changed = [ledger for ledger in ledgers if "invoice" in ledger.text]
    assert sorted(fake_gemini.texts()) == sorted(f"{ledger.text.upper()} (billing)" for ledger in changed)
    assert fake_gemini.request_count == 1
    for ledger in Ledger.objects.all():
        expected = ledger.upper()
        assert ledger.embedding_source_hash == ledger.embedding_embedded_hash == source_hash(expected)
        made = fake_vector(expected, 128)
        norm = sum(x * x for x in made) ** 0.5
        assert list(ledger.embedding) == pytest.approx([x / norm for x in made], abs=1e-6)

    fake_gemini.reset()
    out, _ = call("semantic_embed", "testapp.Ledger", "--rehash")
    assert Embed.REHASHED.format(label="testapp.Ledger.embedding", rows=9, changed=0) in out
    assert Embed.NOTHING.format(label="testapp.Ledger.embedding") in out
    assert fake_gemini.request_count == 0


def test_rehash_of_text_from_columns_says_postgresql_hashes_it(backlog, fake_gemini):
    out, _ = call("semantic_embed", "testapp.Article", "--rehash")
    assert Embed.HASHED_IN_SQL.format(label="testapp.Article.embedding") in out
    assert fake_gemini.texts() == [article.title for article in backlog]


def test_rehash_changes_nothing_in_a_dry_run(fake_gemini):
    with pytest.raises(CommandError) as refused:
        call("semantic_embed", "--rehash", "--dry-run")
    assert str(refused.value) == Embed.REHASH_DRY_RUN
