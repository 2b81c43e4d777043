"""Vector columns that versions before 2026-11-27 created with their size lose it at ``migrate``.

Those versions made an EmbeddingField's column ``vector(768)`` (or ``halfvec(768)``) and
its :class:`~semantic.indexes.EmbeddingIndex` on the bare column. Since then the column
has no size and the index covers ``embedding::vector(768)``, so that a size change alters
no column. The migration files cannot tell the two apart: the field in them is the same,
only the column the old code made differs. A database upgraded from such a version would
keep the sized column for good, and the next size change, an ``AlterField`` that alters
nothing, would leave a column that cannot store the new vectors: embedding would stop on
that database only, while one built fresh from the same migrations (CI's) works.

So after ``migrate`` (``post_migrate``) each such column is made what a fresh database
has: in one transaction, the field's EmbeddingIndexes are dropped (an HNSW index on a
bare column cannot be built on one without a size), the column changes type (the vectors
are kept: only the size leaves the type), and the indexes are created again as the
migrations now create them. The models are the migrated state's, as Django's own
``post_migrate`` receivers read them, so the indexes are those a fresh database has.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, router

from semantic.fields import EmbeddingField
from semantic.indexes import EmbeddingIndex

UNSIZED = (
    "{label}: the column was {actual}, as versions of django-semantic before 2026-11-27 created it; "
    "it is now {declared}, as a new database has it, so a later size change can store its vectors "
    "(vectors kept; indexes rebuilt: {indexes})."
)
NOT_UNSIZED = (
    "{label} is {actual} in the database, as versions of django-semantic before 2026-11-27 created it, but "
    "the model declares {declared}, and migrate left it so: {reason}. Until it is {declared}, a size change "
    "stops the field from being embedded. Fix that and run `manage.py migrate` again; it drops the field's "
    "EmbeddingIndexes, runs {sql!r} and creates them again, in one transaction."
)
#: An HNSW index on the bare column keeps working on an unsized one only until a vector of
#: another size arrives (or the table is truncated), so the column is not changed under it.
UNDECLARED_INDEXES = (
    "the HNSW indexes {names} on the bare column, which the model does not declare, cannot index a column "
    "without a size: drop them (an EmbeddingIndex in the model's Meta.indexes does their work)"
)
REFUSED = "PostgreSQL refused the change ({error})"


def unsize_vector_columns(
    using: str = DEFAULT_DB_ALIAS, apps: Any = global_apps, verbosity: int = 1, stdout: Any = None, **kwargs: Any
) -> None:
    """After ``migrate``: every EmbeddingField column of database ``using`` that carries a size loses it."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    for model in apps.get_models():
        if not model._meta.managed or model._meta.proxy or not router.allow_migrate_model(using, model):
            continue
        for field in model._meta.local_fields:
            if isinstance(field, EmbeddingField):
                message, failed = unsize(connection, model, field)
                if message and stdout is not None and (verbosity or failed):
                    stdout.write(message)


def unsize(connection: Any, model: Any, field: EmbeddingField) -> tuple[str | None, bool]:
    """Make ``field``'s column unsized if it carries a size: what was done (None if nothing), and
    whether it failed (then the message says why and what to do, and nothing changed)."""
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod), attnum FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attname = %s AND NOT attisdropped AND atttypmod > 0",
            [table, field.column],
        )
        row = cursor.fetchone()
        if row is None:
            return None, False
        actual, attnum = row
        names = [
            index.name
            for index in model._meta.indexes
            if isinstance(index, EmbeddingIndex) and index.fields == [field.name]
        ]
        # Only those that exist: one the migrations have not created here is not created either.
        # With their schema: ``remove_index()`` names an index alone, which search_path may not
        # find (a schema-qualified ``db_table``), and DROP INDEX IF EXISTS then drops nothing.
        cursor.execute(
            "SELECT relname, indexrelid::regclass::text FROM pg_index JOIN pg_class ON pg_class.oid = indexrelid "
            "WHERE indrelid = to_regclass(%s) AND relname = ANY(%s)",
            [table, names],
        )
        existing = dict(cursor.fetchall())
        cursor.execute(
            "SELECT relname FROM pg_index JOIN pg_class ON pg_class.oid = indexrelid JOIN pg_am ON pg_am.oid = relam "
            "WHERE indrelid = to_regclass(%s) AND amname = 'hnsw' AND %s = ANY(indkey::int2[]) AND relname <> ALL(%s) "
            "ORDER BY relname",
            [table, attnum, names],
        )
        undeclared = [name for (name,) in cursor.fetchall()]
    indexes = [index for index in model._meta.indexes if index.name in existing]
    declared = field.db_type(connection)
    column = connection.ops.quote_name(field.column)
    sql = f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {declared} USING {column}::{declared}"
    label = f"{model._meta.label}.{field.name}"
    refused = {"label": label, "actual": actual, "declared": declared, "sql": sql}
    if undeclared:
        return NOT_UNSIZED.format(**refused, reason=UNDECLARED_INDEXES.format(names=", ".join(undeclared))), True
    try:
        with connection.schema_editor(atomic=True) as editor:
            for index in indexes:
                editor.execute(f"DROP INDEX {existing[index.name]}")
            editor.execute(sql)
            for index in indexes:
                editor.add_index(model, index)
    except DatabaseError as error:
        return NOT_UNSIZED.format(**refused, reason=REFUSED.format(error=str(error).strip())), True
    names = ", ".join(index.name for index in indexes) or "none"
    return UNSIZED.format(label=label, actual=actual, declared=declared, indexes=names), False
