"""Whether a field's table holds what the field needs: the vector column and its companions.

``makemigrations`` and ``migrate`` add them to a model's table, except when the model is
unmanaged (``Meta.managed = False``): that table belongs to someone else, and migrations
never change it. Its owner adds them by hand, so the messages for it give the SQL.

The worker's sweep and ``semantic_status`` ask first, so one field whose table does not
fit is reported and skipped instead of failing every field after it. So is every field
of a database whose text is not UTF-8 (:func:`encoding_problem`).
"""

from __future__ import annotations

from typing import Any

from django.db import connections, models, router

from semantic.fields import EmbeddingField
from semantic.spec_column import old_spec_name

MISSING_COLUMN = (
    "{label}: the database has no column {column!r}; run `manage.py makemigrations` and `manage.py migrate` first."
)
#: semantic.W009, and the commands' message: a table made before 2026-11-27, not migrated yet
#: (:mod:`semantic.spec_column`).
SPEC_COLUMN_OLD_NAME = (
    "{label}: the table {table} has the column {old!r}, the name django-semantic gave it before 2026-11-27, "
    "but not {new!r}, its name now."
)
#: The question is quoted as makemigrations asks it, so that it can be recognised at the prompt.
SPEC_COLUMN_RENAME = (
    'Run `manage.py makemigrations` in a terminal and answer y to "Was {model}.{old} renamed to {model}.{new}", '
    "or write `migrations.RenameField({model!r}, {old!r}, {new!r})` in a migration of {app} by hand; then "
    "`manage.py migrate`. The column keeps its values, and every row stays embedded. "
    "(`--noinput` answers N and writes a RemoveField and an AddField instead; migrate then copies the values "
    "across before the old column goes.)"
)
#: Also what a database keeps when a migration changed the size across 2,000 dimensions
#: before such a change altered the column: makemigrations and migrate then have nothing
#: to do, so the message gives the statement that does it, in a migration every database runs.
MIGRATION_NEEDED = (
    "{label} is {actual} in the database but the model declares {declared}: run "
    "`manage.py makemigrations` and `manage.py migrate` first. If they find nothing to do, the "
    "size was changed across 2,000 dimensions by a migration an earlier version of django-semantic "
    "applied without changing the column: run `manage.py makemigrations {app} --empty`, add "
    "`migrations.RunSQL({sql!r}, migrations.RunSQL.noop)` to its operations, and migrate (it "
    "rewrites the table). To change the model or size without a gap in search, add a second "
    "EmbeddingField with replaces={field!r} instead (README: Changing the model)."
)
#: A column a version before 2026-11-27 created keeps the size it had then: it cannot store
#: vectors of the size the field now has. ``migrate`` (:mod:`semantic.sized_columns`) changes it.
SIZED_COLUMN = (
    "{label} is {actual} in the database but the model declares {declared} of {dimensions} dimensions: "
    "versions of django-semantic before 2026-11-27 created vector columns with their size, and this one "
    "cannot store vectors of another size. Run `manage.py migrate`: it changes the column to {declared}, "
    "keeping the vectors, and rebuilds the field's EmbeddingIndexes. If it says it could not, do as it says, "
    "or run `manage.py makemigrations {app} --empty`, add `migrations.RunSQL({sql!r}, migrations.RunSQL.noop)` "
    "to its operations and migrate."
)
UNMANAGED_NO_TABLE = (
    "{label}: the database {database!r} has no table {table}. {model} is unmanaged (Meta.managed = False), "
    "so migrate never creates it; whoever owns the table must create it, with the columns the field adds."
)
UNMANAGED_MISSING = (
    "{label}: the table {table} lacks the field's columns {columns}. {model} is unmanaged (Meta.managed = False), so "
    "makemigrations and migrate never change its table: add the columns and indexes by hand "
    "(the partial index keeps the search for pending rows cheap), then run semantic_embed:\n{sql}"
)
#: semantic.E013, and every field of such a database: what is wrong, and why it matters.
NOT_UTF8 = (
    "The database {database!r} stores text in the {encoding} encoding, not UTF8. The app tells whether a row's "
    "text changed since it was embedded by comparing an MD5 hash made in Python, of the text's UTF-8 bytes, with "
    "one PostgreSQL makes of the bytes it stores: for any text with a non-ASCII character they differ, so the "
    "row would be sent to the embedding API on every run and its vector thrown away. Its EmbeddingFields are "
    "not embedded until the database is UTF8."
)
#: Saves, migrations and the admin work on other databases (a project's SQLite test settings); embedding does not.
NOT_POSTGRESQL = (
    "{label}: database {alias!r} is {vendor}, and rows are embedded and searched only on PostgreSQL with "
    "pgvector; its rows stay pending there. Point DATABASES (or your router) at PostgreSQL for this model "
    "(README: Testing your code)."
)
#: How to fix it: the text must be stored as UTF-8.
NOT_UTF8_FIX = (
    "Move the data to a UTF8 database: create one with CREATE DATABASE <name> ENCODING 'UTF8' TEMPLATE "
    "template0, restore a pg_dump of this database into it (PostgreSQL converts the text), and point "
    "DATABASES at it."
)
UNMANAGED_TYPE = (
    "{label} is {actual} in the database but the model declares {declared}. {model} is unmanaged "
    "(Meta.managed = False), so migrations never change its table: change the column to {declared} "
    "by hand, or declare the field as the column is."
)


def schema_problem(field: EmbeddingField, using: str | None = None) -> str | None:
    """What in database ``using`` keeps ``field`` from being embedded or counted; None if nothing.

    A missing table or column, or a vector column of another type. The message says how to
    fix it: a migration for a managed model, the SQL to run for an unmanaged one.
    """
    model = field.model  # the table that holds the field (a proxy's or a child's parent)
    using = using or router.db_for_write(model)
    connection = connections[using]
    label = f"{model._meta.label}.{field.name}"
    if connection.vendor != "postgresql":
        return NOT_POSTGRESQL.format(label=label, alias=using, vendor=connection.display_name)
    if problem := encoding_problem(using):
        return f"{label}: {problem} {NOT_UTF8_FIX}"
    table = connection.ops.quote_name(model._meta.db_table)
    wanted = companions(field)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped AND attname = ANY(%s)",
            [table, [*(f.column for f in wanted), old_spec_name(field.name)]],
        )
        columns = dict(cursor.fetchall())
        missing = [f for f in wanted if f.column not in columns]
        if missing and not model._meta.managed:
            # The index is looked for among the table's own: by name alone it would be
            # looked for on the search path, where a table in another schema's index is not.
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM pg_index JOIN pg_class ON "
                "pg_class.oid = indexrelid WHERE indrelid = to_regclass(%s) AND relname = %s)",
                [table, table, field.pending_index(model).name],
            )
            has_table, has_index = cursor.fetchone()
            if not has_table:
                return UNMANAGED_NO_TABLE.format(label=label, database=using, table=table, model=model._meta.label)
    if missing and model._meta.managed:
        if renamed := old_spec_column(field, columns):
            return " ".join(renamed)
        return MISSING_COLUMN.format(label=label, column=missing[0].column)
    if missing:
        names = ", ".join(repr(f.column) for f in missing)
        sql = "\n".join(unmanaged_sql(model, field, missing, using, with_index=not has_index))
        return UNMANAGED_MISSING.format(label=label, table=table, columns=names, model=model._meta.label, sql=sql)
    declared = field.db_type(connection)
    # A column made before sizes left the column type ("vector(384)") is fine at the field's size.
    if columns[field.column] in (declared, field.sized_db_type()):
        return None
    template = MIGRATION_NEEDED if model._meta.managed else UNMANAGED_TYPE
    if model._meta.managed and columns[field.column].startswith(f"{declared}("):
        template = SIZED_COLUMN
    column = connection.ops.quote_name(field.column)
    return template.format(
        dimensions=field.dimensions,
        label=label,
        actual=columns[field.column],
        declared=declared,
        field=field.name,
        model=model._meta.label,
        app=model._meta.app_label,
        sql=f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {declared} USING {column}::{declared}",
    )


def old_spec_column(field: EmbeddingField, columns: Any) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) when the table of a managed model, whose column names
    are ``columns``, has the spec column under its name before 2026-11-27 and not under
    its name now; None otherwise."""
    model = field.model
    old, new = old_spec_name(field.name), model._meta.get_field(field.spec_name).column
    if old not in columns or new in columns or not model._meta.managed:
        return None
    label = f"{model._meta.label}.{field.name}"
    what = SPEC_COLUMN_OLD_NAME.format(label=label, table=model._meta.db_table, old=old, new=new)
    fix = SPEC_COLUMN_RENAME.format(model=model._meta.model_name, old=old, new=new, app=model._meta.app_label)
    return what, fix


def spec_column_problem(field: EmbeddingField, using: str) -> tuple[str, str] | None:
    """:func:`old_spec_column` for the field's table in database ``using``."""
    connection = connections[using]
    new = field.model._meta.get_field(field.spec_name).column
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped AND attname = ANY(%s)",
            [connection.ops.quote_name(field.model._meta.db_table), [new, old_spec_name(field.name)]],
        )
        return old_spec_column(field, {name for (name,) in cursor.fetchall()})


def has_table(model: type[models.Model], using: str) -> bool:
    """Whether the database has ``model``'s table, found as PostgreSQL finds it in SQL: a
    ``db_table`` may name its schema (``'"billing"."invoice"'``), which the introspection's
    list of table names, unqualified, never matches."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [connection.ops.quote_name(model._meta.db_table)])
        return cursor.fetchone()[0]


def encoding_problem(using: str) -> str | None:
    """Why database ``using`` cannot hold embedded rows: its text is not stored as UTF-8; None if it is.

    The hashes of a row's text in the pending condition and index are SQL frozen in
    users' migrations, so they cannot be made to hash UTF-8 bytes. SQL_ASCII stores the
    bytes a client sends, which are UTF-8 from Django: the hashes agree there.
    """
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT current_setting('server_encoding')")
        encoding = cursor.fetchone()[0]
    if encoding in ("UTF8", "SQL_ASCII"):
        return None
    return NOT_UTF8.format(database=using, encoding=encoding)


def companions(field: EmbeddingField) -> list[models.Field]:
    """The vector column and the hidden ones the field adds beside it, in the order they are made."""
    names = [field.name, field.embedded_hash_name, field.spec_name, field.pending_since_name]
    if field.text_from_python():
        names.append(field.source_hash_name)
    return [field.model._meta.get_field(name) for name in names]


def unmanaged_sql(
    model: type[models.Model], field: EmbeddingField, missing: list[Any], using: str, *, with_index: bool = True
) -> list[str]:
    """The statements that give an existing table the ``missing`` columns, their indexes, and
    (``with_index``) the field's pending index.

    Written by Django's schema editor in the mode ``sqlmigrate`` uses, so they are what
    ``migrate`` would run for a managed model; nothing is run here.
    """
    with connections[using].schema_editor(collect_sql=True, atomic=False) as editor:
        for column in missing:
            editor.add_field(model, column)
        if with_index:
            editor.add_index(model, field.pending_index(model))
    return editor.collected_sql
