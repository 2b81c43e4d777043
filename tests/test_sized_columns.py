"""A vector column that a version before 2026-11-27 created with its size: ``migrate`` makes it
what a database built fresh from the same migrations has.

The old shape is built by hand on a test model's table (the column ``vector(128)``, its
HNSW index on the bare column, as those versions made them), with vectors in it; then the
real ``migrate`` runs.
"""

import io

import pytest
from django.core.management import call_command
from django.db import connection

from semantic import suspend_embedding
from semantic.schema import SIZED_COLUMN, schema_problem
from semantic.sized_columns import NOT_UNSIZED, UNDECLARED_INDEXES, UNSIZED
from tests.testapp.models import Article, Invoice, Passage

pytestmark = pytest.mark.django_db(transaction=True)


def shape(model, index):
    """The vector column's type and the index's definition, as PostgreSQL shows them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attname = 'embedding'",
            [model._meta.db_table],
        )
        (column,) = cursor.fetchone()
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [index])
        return column, [definition for (definition,) in cursor.fetchall()]


def vectors(model):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, embedding::text FROM {model._meta.db_table} ORDER BY id")
        return cursor.fetchall()


def execute(*statements):
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


@pytest.fixture(
    params=[(Article, "vector", 128), (Passage, "halfvec", 768), (Invoice, "vector", 128)],
    ids=["vector", "halfvec", "schema-qualified table"],
)
def old_column(request):
    """The model's table as a version before 2026-11-27 left it, three rows with vectors in it.

    Yields (model, its EmbeddingIndex's name, the fresh shape); the fresh shape is put back after."""
    model, storage, size = request.param
    (index,) = (i for i in model._meta.indexes if i.name.endswith("_embedding_hnsw"))
    table = model._meta.db_table
    # An index lives in its table's schema, which search_path may not name.
    schema = table.split(".")[0] + "." if "." in table else ""
    fresh = shape(model, index.name)
    with suspend_embedding():
        for i in range(3):
            row = model.objects.create(**{"text" if model is Passage else "title": f"Row {i}"})
            vector = "[" + ",".join(str((i + 1) / (k + 2)) for k in range(size)) + "]"
            execute(f"UPDATE {table} SET embedding = '{vector}' WHERE id = {row.pk}")
    execute(
        f"DROP INDEX {schema}{index.name}",
        f"ALTER TABLE {table} ALTER COLUMN embedding TYPE {storage}({size})",
        f"CREATE INDEX {index.name} ON {table} USING hnsw (embedding {storage}_cosine_ops)",
    )
    yield model, index, fresh
    if shape(model, index.name) != fresh:
        execute(
            f"DROP INDEX IF EXISTS {schema}{index.name}",
            f"DROP INDEX IF EXISTS {schema}legacy_hnsw",
            f"ALTER TABLE {table} ALTER COLUMN embedding TYPE {storage} USING embedding::{storage}",
        )
        with connection.schema_editor() as editor:
            editor.add_index(model, index)
    # The flush after each test leaves a table in a schema of its own as it is.
    execute(f"DELETE FROM {table}")


def test_migrate_makes_the_column_and_its_index_what_a_fresh_database_has(old_column):
    model, index, fresh = old_column
    storage = fresh[0]
    before = vectors(model)
    assert shape(model, index.name) != fresh

    out = io.StringIO()
    call_command("migrate", stdout=out)

    assert shape(model, index.name) == fresh
    assert vectors(model) == before
    table = connection.ops.quote_name(model._meta.db_table)
    assert (
        UNSIZED.format(
            label=f"{model._meta.label}.embedding",
            actual=f"{storage}({model._meta.get_field('embedding').dimensions})",
            declared=storage,
            indexes=index.name,
        )
        in out.getvalue()
    )
    # A later size change has vectors of another size stored in the column: now it can hold them.
    execute(f"UPDATE {table} SET embedding = '[1,2,3]' WHERE id = {before[0][0]}")
    # A second migrate finds nothing left to do.
    out = io.StringIO()
    call_command("migrate", stdout=out)
    assert "it was" not in out.getvalue() and shape(model, index.name) == fresh


def test_a_column_migrate_cannot_change_stays_as_it_was_and_migrate_says_how(old_column):
    """An HNSW index the model does not declare, on the bare column, cannot index an unsized one
    (PostgreSQL would keep it through the change, until a vector of another size or a TRUNCATE):
    the column is left as it was, nothing is lost, and the message names the index and gives the SQL."""
    model, index, fresh = old_column
    storage = "halfvec" if model is Passage else "vector"
    table = model._meta.db_table
    execute(f"CREATE INDEX legacy_hnsw ON {table} USING hnsw (embedding {storage}_cosine_ops)")
    before, old = vectors(model), shape(model, index.name)

    out = io.StringIO()
    call_command("migrate", stdout=out)

    assert shape(model, index.name) == old and vectors(model) == before
    quoted = connection.ops.quote_name(table)
    column = connection.ops.quote_name("embedding")
    expected = NOT_UNSIZED.format(
        label=f"{model._meta.label}.embedding",
        actual=old[0],
        declared=storage,
        sql=f"ALTER TABLE {quoted} ALTER COLUMN {column} TYPE {storage} USING {column}::{storage}",
        reason=UNDECLARED_INDEXES.format(names="legacy_hnsw"),
    )
    assert expected in out.getvalue()

    # Dropped as the message says, the next migrate changes the column.
    execute(f"DROP INDEX {table.split('.')[0] + '.' if '.' in table else ''}legacy_hnsw")
    call_command("migrate", verbosity=0)
    assert shape(model, index.name) == fresh and vectors(model) == before


def test_until_migrate_runs_the_field_names_the_sized_column_as_the_cause(old_column):
    """The size changed in the code (here: the column has another), migrate not run yet: the
    message the worker, semantic_embed and semantic_status give names the old column, not a
    change across 2,000 dimensions, and migrate is what fixes it."""
    model, index, fresh = old_column
    storage = fresh[0]
    field = model._meta.get_field("embedding")
    table = model._meta.db_table
    execute(f"UPDATE {table} SET embedding = NULL", f"ALTER TABLE {table} ALTER COLUMN embedding TYPE {storage}(64)")
    quoted, column = connection.ops.quote_name(table), connection.ops.quote_name("embedding")
    assert schema_problem(field) == SIZED_COLUMN.format(
        label=f"{model._meta.label}.embedding",
        actual=f"{storage}(64)",
        declared=storage,
        dimensions=field.dimensions,
        app="testapp",
        sql=f"ALTER TABLE {quoted} ALTER COLUMN {column} TYPE {storage} USING {column}::{storage}",
    )

    call_command("migrate", verbosity=0)
    assert schema_problem(field) is None and shape(model, index.name) == fresh
