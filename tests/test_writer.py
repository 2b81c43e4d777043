"""Writing vectors back while other transactions edit the rows, at the isolation levels
projects choose (``DATABASES[...]["OPTIONS"]["isolation_level"]``), or hold them locked."""

import threading
import time
from contextlib import contextmanager

import numpy as np
import psycopg
import pytest
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper
from psycopg import IsolationLevel

from semantic import suspend_embedding
from semantic.embedder import Embedder
from semantic.models import EmbeddingFailure
from semantic.registry import get_embedding_field
from semantic.rows import pending_rows
from semantic.status import field_status
from semantic.tasks import embed_pending
from semantic.text import source_hash
from semantic.writer import WRITE_ATTEMPTS
from tests.fake_gemini import fake_vector
from tests.testapp.models import Article, Invoice, Snippet

pytestmark = pytest.mark.django_db(transaction=True)

EDITED = "edited while written"


@pytest.fixture
def serializable():
    """The test database reached as a project with ``isolation_level: SERIALIZABLE`` reaches it."""
    options = {**connection.settings_dict["OPTIONS"], "isolation_level": IsolationLevel.SERIALIZABLE}
    wrapper = DatabaseWrapper({**connection.settings_dict, "OPTIONS": options}, alias="serializable")
    connections["serializable"] = wrapper
    yield wrapper
    wrapper.close()
    del connections["serializable"]


@pytest.fixture
def guarded():
    """The test database reached with a ``lock_timeout``: not the behaviour under test, a guard,
    so that a write that waits for a user's lock fails the test instead of hanging it."""
    options = {**connection.settings_dict["OPTIONS"], "options": "-c lock_timeout=5s"}
    wrapper = DatabaseWrapper({**connection.settings_dict, "OPTIONS": options}, alias="guarded")
    connections["guarded"] = wrapper
    yield wrapper
    wrapper.close()
    del connections["guarded"]


@contextmanager
def held_by_a_user(model, *pks):
    """Rows ``pks`` locked as a view's ``select_for_update()`` locks them, in a transaction
    left open until the block ends."""
    user = psycopg.connect(**connection.get_connection_params())  # not autocommit: the transaction stays open
    try:
        for pk in pks:
            user.execute(f"SELECT id FROM {model._meta.db_table} WHERE id = %s FOR UPDATE", [pk])
        yield
    finally:
        user.rollback()
        user.close()


@contextmanager
def edited_while_written(database, column, pk, *, times):
    """Before each of the first ``times`` statements that lock a batch's rows for its writes, the
    writer's transaction has its snapshot and a request edits ``column`` of row ``pk`` and commits:
    PostgreSQL then refuses the lock (40001), as when the request commits while the write waits
    for its row. Yields the list of those statements run (one entry each)."""
    web = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    table = Article._meta.db_table
    writes = []

    def edit_first(execute, sql, params, many, context):
        if "SKIP LOCKED" in sql:
            if len(writes) < times:
                context["cursor"].cursor.execute("SELECT 1")  # the writer's transaction takes its snapshot
                web.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", [EDITED, pk])
            writes.append(sql)
        return execute(sql, params, many, context)

    try:
        with database.execute_wrapper(edit_first):
            yield writes
    finally:
        web.close()


def stored(article):
    article.refresh_from_db()
    value = article.embedding
    return None if value is None else np.array(value.to_list() if hasattr(value, "to_list") else value)


def expected(text):
    vector = np.array(fake_vector(text, 128))
    return vector / np.linalg.norm(vector)


def backlog(count=3):
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Where is my parcel {i}?", body="") for i in range(count))
    return list(Article.objects.order_by("pk"))


def test_a_row_of_the_batch_edited_while_it_is_written_is_retried_not_failed(fake_gemini, serializable):
    rows = backlog()
    with edited_while_written(serializable, "category", rows[-1].pk, times=1) as writes:
        outcome = Embedder(Article, get_embedding_field(Article), using="serializable").run()
    assert len(writes) == 2  # refused once, then written
    assert (outcome.embedded, outcome.failed, outcome.changed_in_flight, outcome.errors) == (3, 0, 0, [])
    assert not EmbeddingFailure.objects.exists()
    assert fake_gemini.request_count == 1
    for row in rows:
        assert np.allclose(stored(row), expected(row.title), atol=1e-6)
    assert rows[-1].category == EDITED  # the request's edit stands


def test_a_row_whose_text_changed_while_it_is_written_gets_no_old_vector(fake_gemini, serializable):
    rows = backlog()
    with edited_while_written(serializable, "body", rows[-1].pk, times=1) as writes:
        outcome = Embedder(Article, get_embedding_field(Article), using="serializable").run()
    assert len(writes) == 2
    assert (outcome.embedded, outcome.failed, outcome.changed_in_flight) == (2, 0, 1)
    assert not EmbeddingFailure.objects.exists()
    assert stored(rows[-1]) is None and rows[-1].body == EDITED
    for row in rows[:-1]:
        assert np.allclose(stored(row), expected(row.title), atol=1e-6)
    Embedder(Article, get_embedding_field(Article)).run()  # its new text, as the sweep would
    assert np.allclose(stored(rows[-1]), expected(f"{rows[-1].title}\n\n{EDITED}"), atol=1e-6)
    assert fake_gemini.request_count == 2


def test_a_batch_that_keeps_losing_to_edits_stays_pending_without_failures(fake_gemini, serializable, caplog):
    rows = backlog()
    with edited_while_written(serializable, "category", rows[0].pk, times=WRITE_ATTEMPTS) as writes:
        outcome = Embedder(Article, get_embedding_field(Article), using="serializable").run()
    assert len(writes) == WRITE_ATTEMPTS
    message = Embedder.WRITE_CONFLICT.format(
        label="testapp.Article.embedding",
        rows=3,
        attempts=WRITE_ATTEMPTS,
        error="could not serialize access due to concurrent update",
    )
    assert outcome.errors == [message] and message in caplog.messages
    assert "the next run or sweep embeds them again" in message
    assert (outcome.embedded, outcome.failed, outcome.changed_in_flight) == (0, 0, 3)
    assert not EmbeddingFailure.objects.exists()  # nothing blames the API
    assert all(stored(row) is None for row in rows)
    outcome = Embedder(Article, get_embedding_field(Article), using="serializable").run()
    assert outcome.embedded == 3 and fake_gemini.request_count == 2


def test_a_row_a_user_holds_locked_is_left_pending_and_the_others_written(fake_gemini, guarded):
    rows = backlog()
    field = get_embedding_field(Article)
    with held_by_a_user(Article, rows[1].pk):
        outcome = Embedder(Article, field, using="guarded").run()
        # Ended while the user's transaction still holds its row: no write waited for it.
        assert (outcome.embedded, outcome.failed, outcome.changed_in_flight, outcome.errors) == (2, 0, 1, [])
        assert len(fake_gemini.texts()) == 3
        for row in (rows[0], rows[2]):
            assert np.allclose(stored(row), expected(row.title), atol=1e-6)
        assert stored(rows[1]) is None
        assert list(pending_rows(Article, field)) == [rows[1]]
        assert not EmbeddingFailure.objects.exists()  # neither the API nor the text is at fault
    outcome = Embedder(Article, field, using="guarded").run()
    assert (outcome.embedded, outcome.changed_in_flight) == (1, 0) and fake_gemini.request_count == 2
    assert np.allclose(stored(rows[1]), expected(rows[1].title), atol=1e-6)


def test_edited_and_emptied_rows_a_user_holds_locked_keep_their_old_vectors(fake_gemini, guarded):
    rows = backlog()
    field = get_embedding_field(Article)
    Embedder(Article, field).run()
    old = [stored(row) for row in rows]
    with suspend_embedding():
        for row, title in zip(rows, ["Where is my order?", "Where is my refund?", ""], strict=True):
            row.title = title
            row.save()
    with held_by_a_user(Article, rows[1].pk, rows[2].pk):
        outcome = Embedder(Article, field, using="guarded").run()
        assert (outcome.embedded, outcome.cleared, outcome.failed, outcome.changed_in_flight) == (1, 0, 0, 2)
        assert np.allclose(stored(rows[0]), expected("Where is my order?"), atol=1e-6)
        assert np.allclose(stored(rows[1]), old[1]) and np.allclose(stored(rows[2]), old[2])
        assert list(pending_rows(Article, field).order_by("pk")) == rows[1:]
        assert not EmbeddingFailure.objects.exists()
    outcome = Embedder(Article, field, using="guarded").run()
    assert (outcome.embedded, outcome.cleared, outcome.changed_in_flight) == (1, 1, 0)
    assert np.allclose(stored(rows[1]), expected("Where is my refund?"), atol=1e-6) and stored(rows[2]) is None


def test_a_stale_hash_on_a_row_a_user_holds_locked_is_refreshed_later(fake_gemini, guarded):
    """Text from Python: a row whose vector is current but whose stored hash is not gets its hash
    rewritten, with no request; a row a user holds keeps its old hash until the next run."""
    snippet = Snippet.objects.create(escaped="Where is my parcel?")
    field = get_embedding_field(Snippet)
    Snippet.objects.update(embedding_source_hash=None)
    fake_gemini.reset()
    with held_by_a_user(Snippet, snippet.pk):
        outcome = Embedder(Snippet, field, using="guarded").run()
        assert (outcome.embedded, outcome.failed, outcome.errors) == (0, 0, [])
        snippet.refresh_from_db()
        assert snippet.embedding_source_hash is None
    Embedder(Snippet, field, using="guarded").run()
    snippet.refresh_from_db()
    assert snippet.embedding_source_hash == source_hash("Where is my parcel?")
    assert fake_gemini.request_count == 0


def test_a_user_transaction_that_holds_a_row_of_the_batch_and_saves_another_is_not_deadlocked(fake_gemini, guarded):
    """A view locks a row of a batch in flight, then saves another row of it: the worker must
    not hold that other row while it waits for the first, or PostgreSQL ends the view's
    transaction as a deadlock."""
    rows = backlog()
    field = get_embedding_field(Article)
    table = Article._meta.db_table
    outcomes = []

    # In production the worker has usually waited longer than deadlock_timeout when the view comes
    # back for the row, so PostgreSQL's check runs in the view's session and ends the view's
    # transaction; here the worker's check is put off, for the same outcome every time.
    options = {**guarded.settings_dict["OPTIONS"], "options": "-c lock_timeout=5s -c deadlock_timeout=60s"}
    worker_settings = {**guarded.settings_dict, "OPTIONS": options}

    def worker():
        connections["guarded"] = own = DatabaseWrapper(worker_settings, alias="guarded")  # connections are per thread
        try:
            outcomes.append(Embedder(Article, field, using="guarded").run())
        finally:
            own.close()
            connections.close_all()  # the settings' aliases this thread opened

    user = psycopg.connect(**connection.get_connection_params())
    user.execute("SET lock_timeout = '5s'")  # the guard again, on this side
    user.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [rows[-1].pk])
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        # Until the worker has ended or waits for a lock (the bug): either way, then the view goes on.
        while thread.is_alive() and not user.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchone():
            time.sleep(0.01)
        user.execute(f"UPDATE {table} SET category = 'seen' WHERE id = %s", [rows[0].pk])
        user.commit()  # the view's transaction stands
    finally:
        user.close()
        thread.join()
    (outcome,) = outcomes
    assert (outcome.embedded, outcome.failed, outcome.changed_in_flight) == (2, 0, 1)
    assert Article.objects.get(pk=rows[0].pk).category == "seen"
    assert list(pending_rows(Article, field)) == [rows[-1]]


@pytest.fixture
def invoices():
    """Rows of :class:`Invoice`, deleted after the test: the flush between tests truncates
    only the tables Django finds by unqualified name, and those of another schema it never finds."""
    yield
    Invoice.objects.all().delete()


def test_rows_of_a_table_in_another_schema_are_embedded_and_searched(fake_gemini, invoices):
    field = get_embedding_field(Invoice)
    saved = Invoice.objects.create(title="Reset a forgotten password", body="Use the link on the login page")
    with suspend_embedding():
        swept = Invoice.objects.create(title="Export invoices to CSV", body="Billing > Export")
    assert stored(saved) is not None  # embedded by its save

    summary = embed_pending("testapp.Invoice")["testapp.Invoice.embedding"]
    assert (summary["embedded"], summary["failed"], summary["errors"]) == (1, 0, [])
    assert not EmbeddingFailure.objects.exists()
    assert np.allclose(stored(swept), expected(f"{swept.title}\n\n{swept.body}"), atol=1e-6)
    assert list(Invoice.objects.similar_to(swept)) == [saved]  # every other searchable row, itself left out
    status = field_status(Invoice, field)
    assert (status["total"], status["embedded"], status["pending"], status["failed"]) == (2, 2, 0, 0)


def test_a_row_of_a_table_in_another_schema_a_user_holds_locked_is_left_pending(fake_gemini, guarded, invoices):
    field = get_embedding_field(Invoice)
    with suspend_embedding():
        rows = [Invoice.objects.create(title=f"Invoice {i}", body="") for i in range(2)]
    with held_by_a_user(Invoice, rows[0].pk):
        outcome = Embedder(Invoice, field, using="guarded").run()
        assert (outcome.embedded, outcome.failed, outcome.changed_in_flight, outcome.errors) == (1, 0, 1, [])
        assert list(pending_rows(Invoice, field)) == [rows[0]]
    assert Embedder(Invoice, field, using="guarded").run().embedded == 1
    assert not pending_rows(Invoice, field).exists()
