"""Writing vectors back while other transactions edit the rows, at the isolation levels
projects choose (``DATABASES[...]["OPTIONS"]["isolation_level"]``)."""

from contextlib import contextmanager

import numpy as np
import psycopg
import pytest
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper
from psycopg import IsolationLevel

from semantic import suspend_embedding
from semantic.embedder import Embedder
from semantic.fields import get_embedding_field
from semantic.models import EmbeddingFailure
from semantic.writer import WRITE_ATTEMPTS
from tests.fake_gemini import fake_vector
from tests.testapp.models import Article

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


@contextmanager
def edited_while_written(database, column, pk, *, times):
    """Before each of the first ``times`` statements that write a batch's vectors, the writer's
    transaction has its snapshot and a request edits ``column`` of row ``pk`` and commits:
    PostgreSQL then refuses the write (40001), as when the request commits while the write waits
    for its row. Yields the list of those statements run (one entry each)."""
    web = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    table = Article._meta.db_table
    writes = []

    def edit_first(execute, sql, params, many, context):
        if "v(pk, hash, guard, vector)" in sql:
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
