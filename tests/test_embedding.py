"""The save path: every save ends with the right vector, through the real google-genai
client and the fake Gemini server, in SYNC mode (the worker path is test_worker.py)."""

import io
import math
import re
import threading
from datetime import timedelta

import numpy as np
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from semantic import embed_pending, suspend_embedding
from semantic.backends import EmbeddingBackend
from semantic.backends.gemini import UNSENDABLE_KEY
from semantic.claims import LOCKS_LOST
from semantic.embedder import Embedder
from semantic.models import EmbeddingFailure, RateLimit
from semantic.ratelimit import configuration_problem
from semantic.registry import get_embedding_field
from semantic.text import source_hash
from tests.fake_gemini import BAD_KEY, MODEL_NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED, api_error, fake_vector
from tests.testapp.models import Article, Document, Snippet, Translated

pytestmark = pytest.mark.django_db(transaction=True)


def expected(text, dims=128):
    v = np.array(fake_vector(text, dims))
    return v / np.linalg.norm(v)


def stored(obj, name="embedding"):
    obj.refresh_from_db()
    value = getattr(obj, name)
    return None if value is None else np.array(value.to_list() if hasattr(value, "to_list") else value)


def test_save_embeds_the_text(fake_gemini):
    article = Article.objects.create(title="Reset password", body="I forgot my password")
    assert fake_gemini.request_count == 1
    assert fake_gemini.texts() == ["Reset password\n\nI forgot my password"]
    vector = stored(article)
    assert np.allclose(vector, expected("Reset password\n\nI forgot my password"), atol=1e-6)
    assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-5)
    assert article.embedding_embedded_hash == get_embedding_field(Article).text_hash(article)
    assert article.embedding_spec == "gemini:gemini-embedding-001|SEMANTIC_SIMILARITY|128"


def test_unchanged_text_makes_no_request(fake_gemini):
    article = Article.objects.create(title="Same", body="text")
    fake_gemini.reset()
    article.save()
    Article.objects.get(pk=article.pk).save()
    embed_pending()
    assert fake_gemini.request_count == 0


def test_saving_a_copy_loaded_before_the_vector_keeps_the_vector(fake_gemini):
    with suspend_embedding():
        article = Article.objects.create(title="Loaded early", body="")
    early = Article.objects.get(pk=article.pk)
    embed_pending()
    fake_gemini.reset()
    early.save()  # its in-memory vector is None; the stored one must survive
    assert stored(article) is not None
    assert fake_gemini.request_count == 0


def test_fields_are_independent(fake_gemini):
    doc = Document.objects.create(title="Invoices", text="How to export invoices")
    assert fake_gemini.request_count == 2
    fake_gemini.reset()
    doc.text = "How to export invoices as CSV"
    doc.save()
    assert fake_gemini.request_count == 1
    (item,) = fake_gemini.requests[0]["body"]["requests"]
    assert item["taskType"] == "RETRIEVAL_DOCUMENT"
    assert item["title"] == "Invoices"
    assert item["outputDimensionality"] == 3072
    doc.refresh_from_db()
    assert doc.summary_embedded_hash == get_embedding_field(Document, "summary").text_hash(doc)
    assert doc.content_embedded_hash == doc.content_source_hash  # text from a method: hashed in Python


def test_rows_whose_text_from_python_was_never_hashed_are_embedded_once(fake_gemini):
    # Rows that existed before a field whose text comes from a method: AddField leaves their hash NULL.
    with suspend_embedding():
        texts = Snippet.objects.create(escaped="Written before the field")
        empty = Snippet.objects.create(escaped="")
        refused = Snippet.objects.create(escaped="Refused text")
    Snippet.objects.update(embedding_source_hash=None)
    field = get_embedding_field(Snippet)
    assert Snippet.objects.filter(field.pending()).count() == 3
    fake_gemini.reject_marker = "Refused"

    result = embed_pending()["testapp.Snippet.embedding"]

    assert (result["embedded"], result["cleared"], result["failed"]) == (1, 1, 1)
    assert np.allclose(stored(texts), expected("Written before the field"), atol=1e-6)
    assert texts.embedding_source_hash == texts.embedding_embedded_hash == field.text_hash(texts)
    assert stored(empty) is None
    assert empty.embedding_source_hash == empty.embedding_embedded_hash == ""  # known to be empty
    refused.refresh_from_db()
    assert refused.embedding_source_hash == field.text_hash(refused)  # the failure's hash, so it is not retried
    fake_gemini.reset()
    assert embed_pending()["testapp.Snippet.embedding"]["embedded"] == 0
    assert fake_gemini.request_count == 0


def test_semantic_embed_all_hashes_text_from_python_again(fake_gemini):
    snippet = Snippet.objects.create(escaped="Before the update")
    Snippet.objects.update(escaped="Changed by update")  # no save(): the hash is not recomputed
    assert embed_pending()["testapp.Snippet.embedding"]["embedded"] == 0

    call_command("semantic_embed", "testapp.Snippet", "--all", stdout=io.StringIO())

    assert np.allclose(stored(snippet), expected("Changed by update"), atol=1e-6)
    assert snippet.embedding_source_hash == snippet.embedding_embedded_hash == source_hash("Changed by update")


def test_the_worker_embeds_the_text_as_stored_not_as_an_attribute_gives_it(fake_gemini):
    # Under django-modeltranslation the attribute gives the active language's column; the
    # rows to embed, and the check before writing, are decided on the column itself.
    row = Translated.objects.create(text_en="")
    Translated.objects.filter(pk=row.pk).update(text="Passwort zurücksetzen")

    result = embed_pending()["testapp.Translated.embedding"]

    assert (result["embedded"], result["changed_in_flight"]) == (1, 0)
    assert fake_gemini.texts() == ["Passwort zurücksetzen"]
    assert np.allclose(stored(row), expected("Passwort zurücksetzen"), atol=1e-6)
    assert embed_pending()["testapp.Translated.embedding"]["embedded"] == 0


def test_halfvec_column_for_3072_dimensions():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'testapp_document'::regclass AND attname IN ('summary', 'content') ORDER BY attname"
        )
        assert [row[0] for row in cursor.fetchall()] == ["halfvec", "vector"]  # sizes live in the field
    doc = Document.objects.create(title="t", text="full size")
    assert len(stored(doc, "content")) == 3072


def test_bulk_create_is_caught_by_the_sweep_in_batches(fake_gemini):
    Article.objects.bulk_create(Article(title=f"Bulk article {i}", body="") for i in range(250))
    assert fake_gemini.request_count == 0
    result = embed_pending()
    assert result["testapp.Article.embedding"]["embedded"] == 250
    assert fake_gemini.request_count == 3  # ceil(250 / 100)
    assert not Article.objects.filter(embedding__isnull=True).exists()


def test_queryset_update_is_caught_by_the_sweep(fake_gemini):
    a = Article.objects.create(title="One", body="")
    Article.objects.create(title="Two", body="")
    fake_gemini.reset()
    Article.objects.filter(pk=a.pk).update(body="changed without save()")
    embed_pending()
    assert fake_gemini.texts() == ["One\n\nchanged without save()"]
    assert np.allclose(stored(a), expected("One\n\nchanged without save()"), atol=1e-6)


def test_saves_in_one_transaction_share_requests(fake_gemini):
    with transaction.atomic():
        for i in range(30):
            Article.objects.create(title=f"In a transaction {i}", body="")
        assert fake_gemini.request_count == 0  # nothing leaves before commit
    assert fake_gemini.request_count == 1
    assert Article.objects.filter(embedding__isnull=False).count() == 30


def test_rollback_sends_nothing(fake_gemini):
    with pytest.raises(RuntimeError), transaction.atomic():
        Article.objects.create(title="Rolled back", body="")
        raise RuntimeError
    assert fake_gemini.request_count == 0


def test_row_edited_while_its_batch_is_in_flight_ends_with_its_final_text(fake_gemini):
    article = Article.objects.create(title="Draft", body="")
    fake_gemini.reset()
    edited = threading.Event()

    def edit_during_first_request(record):
        if not edited.is_set():
            edited.set()
            # Another request/process saves the row while the API call is running.
            Article.objects.filter(pk=article.pk).update(body="final text")

    fake_gemini.on_request = edit_during_first_request
    Article.objects.filter(pk=article.pk).update(body="first edit")
    summary = embed_pending()["testapp.Article.embedding"]
    assert summary["changed_in_flight"] == 1
    embed_pending()
    assert np.allclose(stored(article), expected("Draft\n\nfinal text"), atol=1e-6)
    article.refresh_from_db()
    assert article.embedding_embedded_hash == get_embedding_field(Article).text_hash(article)


def test_empty_text_makes_no_request_and_no_vector(fake_gemini):
    blank = Article.objects.create(title="", body="")
    spaces = Article.objects.create(title="   ", body="\n\t ")
    embed_pending()
    assert fake_gemini.request_count == 0
    assert stored(blank) is None and stored(spaces) is None
    assert not EmbeddingFailure.objects.exists()


def test_text_emptied_clears_the_old_vector(fake_gemini):
    article = Article.objects.create(title="Had text", body="")
    article.title = ""
    article.save()
    assert stored(article) is None
    assert fake_gemini.request_count == 1


def test_huge_text_is_truncated(fake_gemini):
    Article.objects.create(title="x" * 200, body="y" * 50_000)
    (text,) = fake_gemini.texts()
    assert len(text) == 8000
    assert Article.objects.get().embedding is not None


def test_nul_bytes_and_lone_surrogates_are_cleaned(fake_gemini):
    snippet = Snippet.objects.create(escaped=r"before\x00after \ud800 end")
    (text,) = fake_gemini.texts()
    assert "\x00" not in text and "\ud800" not in text
    assert text.startswith("before") and text.endswith("end")
    assert stored(snippet) is not None


def test_transient_errors_are_retried_until_success(fake_gemini):
    fake_gemini.fail_next(500, times=2)
    article = Article.objects.create(title="Flaky", body="")
    assert fake_gemini.request_count == 3
    assert stored(article) is not None
    assert not EmbeddingFailure.objects.exists()


def test_429_waits_for_retry_after(fake_gemini):
    fake_gemini.fail_next(429, retry_after="1")
    article = Article.objects.create(title="Rate limited", body="")
    first, second = fake_gemini.requests
    assert second["time"] - first["time"] >= 1.0
    assert stored(article) is not None


def test_exhausted_retries_record_a_failure_then_a_later_sweep_succeeds(fake_gemini):
    fake_gemini.fail_next(503, times=settings.SEMANTIC["MAX_ATTEMPTS"] if "MAX_ATTEMPTS" in settings.SEMANTIC else 4)
    article = Article.objects.create(title="Outage", body="keep me")
    failure = EmbeddingFailure.objects.get()
    assert failure.object_pk == str(article.pk)
    assert failure.attempts == 4
    assert "503" in failure.error
    assert not failure.permanent and failure.retry_at > timezone.now()
    article.refresh_from_db()
    assert article.body == "keep me" and article.embedding is None

    assert embed_pending()["testapp.Article.embedding"]["requests"] == 0  # waits for retry_at
    EmbeddingFailure.objects.update(retry_at=timezone.now() - timedelta(seconds=1))
    embed_pending()
    assert stored(article) is not None
    assert not EmbeddingFailure.objects.exists()


def test_permanent_error_isolates_the_bad_text_without_a_retry_storm(fake_gemini):
    fake_gemini.reject_marker = "REJECT"
    Article.objects.bulk_create(
        [Article(title=f"good {i}", body="") for i in range(7)] + [Article(title="REJECT me", body="")]
    )
    embed_pending()
    assert Article.objects.filter(embedding__isnull=False).count() == 7
    failure = EmbeddingFailure.objects.get()
    assert failure.permanent and "400" in failure.error
    assert fake_gemini.request_count <= 1 + 2 * 3  # one batch, then halving down to the bad row

    fake_gemini.reset()
    embed_pending()
    assert fake_gemini.request_count == 0  # not retried while the text is unchanged
    bad = Article.objects.get(title="REJECT me")
    bad.title = "fixed"
    bad.save()
    assert stored(bad) is not None
    assert not EmbeddingFailure.objects.exists()


def test_timeouts_are_recorded_as_transient_failures(fake_gemini, semantic_settings):
    semantic_settings(TIMEOUT=0.2, MAX_ATTEMPTS=2)
    fake_gemini.latency = 1.0
    article = Article.objects.create(title="Slow", body="")
    failure = EmbeddingFailure.objects.get()
    assert failure.attempts == 2 and not failure.permanent
    assert "Timeout" in failure.error or "timed out" in failure.error
    assert stored(article) is None


def test_missing_key_is_reported_with_how_to_fix_and_the_row_waits(fake_gemini, semantic_settings, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    semantic_settings(API_KEY=None)
    article = Article.objects.create(title="No key", body="")
    assert not EmbeddingFailure.objects.exists()
    assert "GEMINI_API_KEY" in configuration_problem()
    assert fake_gemini.request_count == 0
    semantic_settings(API_KEY="AIzaNEW-key")
    embed_pending()
    assert stored(article) is not None
    assert configuration_problem() is None


def test_a_key_pasted_with_quotes_stops_the_run_saying_to_fix_the_key(fake_gemini, semantic_settings):
    """Not "try again later" and a retry every sweep: nothing can be sent until the key is set again."""
    semantic_settings(API_KEY=f"\u201c{settings.TEST_API_KEY}\u201d")
    Article.objects.bulk_create(Article(title=f"quoted key {i}", body="") for i in range(3))
    summary = embed_pending()["testapp.Article.embedding"]
    assert summary["stopped"] == UNSENDABLE_KEY and summary["requests"] == 0 and summary["failed"] == 0
    assert configuration_problem() == UNSENDABLE_KEY
    assert fake_gemini.request_count == 0 and not EmbeddingFailure.objects.exists()
    semantic_settings(API_KEY=settings.TEST_API_KEY)
    embed_pending()
    assert not Article.objects.filter(embedding__isnull=True).exists()


def test_the_key_never_reaches_logs_failures_or_results(fake_gemini, all_logs):
    key = settings.TEST_API_KEY
    fake_gemini.fail_next(400, body='{"error": {"code": 400, "message": "API key %s not valid"}}' % key)
    Article.objects.bulk_create([Article(title="leak?", body="")])
    result = embed_pending()
    assert fake_gemini.requests[0]["api_key"] == key  # it was sent, as a header
    assert key not in repr(result)
    assert key not in all_logs.text
    assert key not in EmbeddingFailure.objects.get().error
    assert "[redacted]" in EmbeddingFailure.objects.get().error


def test_changing_the_model_makes_rows_stale_not_wrong(fake_gemini, semantic_settings):
    article = Article.objects.create(title="Model switch", body="")
    field = get_embedding_field(Article)
    assert not Article.objects.filter(field.needs_embedding()).exists()
    semantic_settings(MODEL="gemini-embedding-002")
    assert Article.objects.filter(field.needs_embedding()).get() == article
    assert not Article.objects.filter(field.is_current()).exists()
    fake_gemini.reset()
    embed_pending()
    assert fake_gemini.requests[0]["model"] == "gemini-embedding-002"
    article.refresh_from_db()
    assert article.embedding_spec.startswith("gemini:gemini-embedding-002|")


def test_a_vector_whose_spec_is_unknown_is_stale_and_the_sweep_embeds_it_again(fake_gemini):
    """An earlier version's row, a ``loaddata`` or a raw copy can hold a vector with no spec:
    no search finds it until the sweep makes it again."""
    article = Article.objects.create(title="Glacier moraine", body="ice")
    field = get_embedding_field(Article)
    Article.objects.filter(pk=article.pk).update(embedding_spec=None)
    assert Article.objects.filter(field.needs_embedding()).get() == article
    assert not Article.objects.filter(field.searchable()).exists()
    embed_pending()
    assert Article.objects.filter(field.searchable()).get() == article


def test_suspend_embedding_defers_to_the_sweep(fake_gemini):
    with suspend_embedding():
        Article.objects.create(title="Imported", body="")
    assert fake_gemini.request_count == 0
    embed_pending()
    assert fake_gemini.request_count == 1


def test_raw_saves_are_skipped(fake_gemini):
    from django.core import serializers

    data = '[{"model": "testapp.article", "pk": 999, "fields": {"title": "fixture", "body": ""}}]'
    for obj in serializers.deserialize("json", data):
        obj.save()
    assert fake_gemini.request_count == 0
    assert Article.objects.filter(get_embedding_field(Article).needs_embedding()).count() == 1


@pytest.mark.parametrize("header", ["inf", "1e15"])
def test_a_huge_retry_after_delays_the_rows_without_raising(fake_gemini, header):
    Article.objects.bulk_create(Article(title=f"huge wait {i}", body="") for i in range(3))
    fake_gemini.fail_next(429, retry_after=header)
    summary = embed_pending()["testapp.Article.embedding"]
    assert summary["failed"] == 3 and fake_gemini.request_count == 1
    failures = EmbeddingFailure.objects.all()
    assert len(failures) == 3 and not any(f.permanent for f in failures)
    assert all(f.retry_at > timezone.now() + timedelta(minutes=59) for f in failures)


def test_each_half_of_a_split_batch_starts_with_fresh_attempts(fake_gemini):
    """A rejected row, then three 500s: the good rows still end embedded (MAX_ATTEMPTS is 4)."""
    fake_gemini.reject_marker = "REJECT"
    Article.objects.bulk_create(Article(title=f"REJECT {i}" if i == 10 else f"good {i}", body="") for i in range(100))

    def three_500s_after_the_first_request(record):
        if len(fake_gemini.requests) == 1:
            fake_gemini.fail_next(500, times=3)

    fake_gemini.on_request = three_500s_after_the_first_request
    embed_pending()
    assert Article.objects.filter(embedding__isnull=False).count() == 99
    failure = EmbeddingFailure.objects.get()
    assert failure.permanent and failure.object_pk == str(Article.objects.get(title="REJECT 10").pk)


@pytest.mark.parametrize(
    ("status", "body", "fix"),
    [
        (400, BAD_KEY, "SEMANTIC['API_KEY']"),
        (401, UNAUTHENTICATED, "SEMANTIC['API_KEY']"),
        (403, PERMISSION_DENIED, "SEMANTIC['API_KEY']"),
        (404, MODEL_NOT_FOUND, "SEMANTIC['MODEL']"),
    ],
)
def test_a_configuration_error_stops_sending_and_the_rows_recover_once_fixed(fake_gemini, status, body, fix):
    """Not a bad text: no splitting, no failure per row, one request, one problem to show."""
    Article.objects.bulk_create(Article(title=f"config {i}", body="") for i in range(200))
    fake_gemini.fail_every(status, body=body)
    summary = embed_pending()["testapp.Article.embedding"]
    assert fake_gemini.request_count == 1
    assert summary["failed"] == 0 and not EmbeddingFailure.objects.exists()
    assert fix in summary["stopped"]
    problem = configuration_problem()
    assert fix in problem and settings.TEST_API_KEY not in problem
    Article.objects.create(title="saved meanwhile", body="")
    embed_pending()
    assert fake_gemini.request_count == 1  # the worker stays quiet for a while

    fake_gemini.reset()  # the problem is fixed on the API's side
    RateLimit.objects.update(paused_until=timezone.now())  # and the quiet time is over
    summary = embed_pending()["testapp.Article.embedding"]
    assert summary["embedded"] == 201
    assert configuration_problem() is None


def test_a_new_key_recovers_the_rows_at_once(fake_gemini, semantic_settings):
    Article.objects.bulk_create(Article(title=f"revoked {i}", body="") for i in range(20))
    fake_gemini.fail_every(400, body=BAD_KEY)
    embed_pending()
    assert "SEMANTIC['API_KEY']" in configuration_problem()
    fake_gemini.reset()
    semantic_settings(API_KEY="AIzaROTATED-key")
    assert embed_pending()["testapp.Article.embedding"]["embedded"] == 20
    assert fake_gemini.requests[0]["api_key"] == "AIzaROTATED-key"
    assert configuration_problem() is None


def test_a_key_with_surrounding_whitespace_never_reaches_logs_failures_or_results(
    fake_gemini, semantic_settings, all_logs
):
    key = settings.TEST_API_KEY
    semantic_settings(API_KEY=f"  {key}\n")
    fake_gemini.fail_next(400, body=api_error(400, f"API key {key} not valid", "INVALID_ARGUMENT"))
    Article.objects.bulk_create([Article(title="leak?", body="")])
    result = embed_pending()
    assert fake_gemini.requests[0]["api_key"] == key
    assert key not in repr(result)
    assert key not in all_logs.text
    assert key not in EmbeddingFailure.objects.get().error


@pytest.mark.parametrize("value", ["NaN", "1e400"])  # 1e400 is infinite once parsed
def test_a_vector_with_nan_or_infinity_is_a_malformed_answer_retried_then_recorded(fake_gemini, value):
    """PostgreSQL refuses such a vector; it must fail its rows, never crash the run. Four of them
    in a row stop the run as any answer that kept failing does (the next batch would get the same)."""
    Article.objects.bulk_create(Article(title=f"broken answer {i}", body="") for i in range(2))
    fake_gemini.bad_embeddings_next('{"values": [%s%s]}' % (value, ", 0.1" * 127), times=4)
    summary = embed_pending()["testapp.Article.embedding"]
    message = "Gemini API sent a malformed answer: a vector holding NaN or infinite values."
    stopped = Embedder.API_FAILING.format(error=message, attempts=4)
    assert fake_gemini.request_count == 4 and summary["failed"] == 2 and summary["stopped"] == stopped
    assert summary["errors"] == [message, stopped]
    failures = EmbeddingFailure.objects.all()
    assert [(f.attempts, f.permanent, f.error) for f in failures] == [(4, False, message)] * 2
    assert not Article.objects.filter(embedding__isnull=False).exists()

    EmbeddingFailure.objects.update(retry_at=timezone.now() - timedelta(seconds=1))
    assert embed_pending()["testapp.Article.embedding"]["embedded"] == 2
    assert not EmbeddingFailure.objects.exists()


def test_an_empty_embedding_is_retried_not_a_configuration_problem(fake_gemini):
    fake_gemini.bad_embeddings_next("{}")
    article = Article.objects.create(title="Empty answer first", body="")
    assert fake_gemini.request_count == 2
    assert stored(article) is not None
    assert configuration_problem() is None and not RateLimit.objects.filter(paused_until__isnull=False).exists()


def test_vectors_of_another_size_stop_that_field_only_and_say_which_size_to_set(fake_gemini):
    """A model that ignores output_dimensionality: not the key's problem, so the other fields go on."""
    with suspend_embedding():
        document = Document.objects.create(title="Same key, two sizes", text="a longer text")
    fake_gemini.bad_embeddings_next('{"values": [%s]}' % ", ".join(["0.01"] * 3072))
    summary = embed_pending("testapp.Document")
    wrong, right = summary["testapp.Document.summary"], summary["testapp.Document.content"]
    assert wrong["stopped"] == Embedder.WRONG_SIZE.format(
        label="testapp.Document.summary", dimensions=256, model="gemini:gemini-embedding-001", size=3072
    )
    assert "set dimensions=3072 on the field" in wrong["stopped"]
    assert right["embedded"] == 1 and right["stopped"] is None
    assert fake_gemini.request_count == 2
    assert configuration_problem() is None and not RateLimit.objects.filter(paused_until__isnull=False).exists()
    assert not EmbeddingFailure.objects.exists()  # the rows stay pending, as for a misfit found by the check
    assert stored(document, "summary") is None and stored(document, "content") is not None


class OutOfRange(EmbeddingBackend):
    """Finite values that pgvector's float32 cannot hold, for texts with HUGE in them."""

    name = "out-of-range"

    def embed(self, texts, *, task_type, dimensions, titles=None):
        return [
            [1e39] + [1.0] * (dimensions - 1) if "HUGE" in text else fake_vector(text, dimensions) for text in texts
        ]


def test_vectors_the_database_refuses_fail_their_batch_not_the_run(fake_gemini):
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=t, body="") for t in ("first fine", "HUGE values", "last fine"))
    outcome = Embedder(Article, get_embedding_field(Article), backend=OutOfRange(), batch_size=1).run()
    assert (outcome.embedded, outcome.failed) == (2, 1)
    failure = EmbeddingFailure.objects.get()
    assert failure.object_pk == str(Article.objects.get(title="HUGE values").pk) and not failure.permanent
    assert failure.error.startswith("The database refused the vectors (DataError: ")
    assert "out of range" in failure.error and failure.error.endswith("the rows are retried later.")
    assert outcome.errors == [failure.error]


def test_locks_not_held_when_released_are_reported_with_the_likely_cause(fake_gemini, caplog):
    with suspend_embedding():
        article = Article.objects.create(title="Reset password", body="I forgot my password")
    embedder = Embedder(Article, get_embedding_field(Article))
    taken = embedder.claim([article])
    assert taken == [str(article.pk)]
    # The session that took the locks is gone, as when a transaction-mode pooler sends the
    # release to another server connection (where nothing is held).
    connection.close()

    embedder.release(taken)

    message = LOCKS_LOST.format(label="testapp.Article.embedding", count=2)  # the row's and the field's
    assert embedder.outcome.errors == [message]
    assert message in caplog.messages
    assert "session mode" in message


def test_the_search_for_pending_rows_reads_the_pending_index_not_the_table(fake_gemini):
    """3,000 embedded rows, 3 changed behind the ORM's back: the worker's statements that
    look for work are planned from the field's partial pending index, never as a walk of
    the primary key or a scan of the table (PostgreSQL takes nearly every row for pending)."""
    field = get_embedding_field(Article)
    vectors = np.random.default_rng(5).normal(size=(3000, 128))
    with suspend_embedding():
        Article.objects.bulk_create(
            Article(title=f"row {i}", body="", embedding=v.tolist()) for i, v in enumerate(vectors)
        )
    Article.objects.update(embedding_embedded_hash=field.stored_text_hash(), embedding_spec=field.spec())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_article")
    changed = list(Article.objects.order_by("pk").values_list("pk", flat=True)[100:3000:1000])
    Article.objects.filter(pk__in=changed).update(title="changed")

    with CaptureQueriesContext(connection) as queries:
        assert Embedder(Article, field).run().embedded == 3
    assert not Article.objects.filter(field.needs_embedding()).exists()

    # Replayed with the planner settings each ran under; reads of the table explained.
    index = field.pending_index(Article).name
    plans = []
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in (query["sql"] for query in queries.captured_queries):
            if "set_config" in sql:
                cursor.execute(sql)
            elif sql.startswith('SELECT "testapp_article"'):
                cursor.execute("EXPLAIN " + sql)
                plans.append("\n".join(row[0] for row in cursor.fetchall()))
    assert any(index in plan for plan in plans), plans
    for plan in plans:
        assert "Seq Scan on testapp_article" not in plan, plan
        walks = re.findall(r"Index Scan using testapp_article_pkey.*\n(\s+Index Cond: [^\n]*)?", plan)
        assert all("= ANY" in cond for cond in walks), plan
