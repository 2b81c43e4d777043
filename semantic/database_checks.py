"""System checks that read a database: run by ``manage.py check --database``, ``migrate``
and test runs, for the databases they are given.

The server must offer pgvector in the schema the field's columns will find it; the
database's text must be UTF-8; an unmanaged model's table must already have the field's
columns, since no migration will add them; a table made before 2026-11-27 must have its
spec column renamed; and PostgreSQL must not end a worker's session while it waits for the
embedding API.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core import checks
from django.db import connections, router

from semantic.operations import extension_elsewhere


@checks.register(checks.Tags.database)
def check_extension(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            available = cursor.fetchone() is not None
        if not available:
            errors.append(
                checks.Error(
                    f"The pgvector extension is not installed on the PostgreSQL server of database {alias!r}.",
                    hint="Install pgvector on the server (e.g. apt install postgresql-17-pgvector, "
                    "or see https://github.com/pgvector/pgvector#installation), then run migrate.",
                    id="semantic.E004",
                )
            )
        elif problem := extension_elsewhere(connection):
            errors.append(checks.Error(problem, id="semantic.E012"))
    return errors


@checks.register(checks.Tags.database)
def check_encoding(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A database whose text is not UTF-8 cannot hold embedded rows (see
    :func:`semantic.schema.encoding_problem`): an error, so that ``migrate`` stops before
    the first EmbeddingField is added there. Only databases that hold such a field."""
    from semantic.registry import embedding_fields
    from semantic.schema import NOT_UTF8_FIX, encoding_problem

    errors: list[checks.CheckMessage] = []
    for alias in databases or []:
        if connections[alias].vendor != "postgresql":
            continue
        if not any(
            router.allow_migrate_model(alias, model) or router.db_for_write(model) == alias
            for model in apps.get_models()
            if any(field.model is model for field in embedding_fields(model))
        ):
            continue
        if problem := encoding_problem(alias):
            errors.append(checks.Error(problem, hint=NOT_UTF8_FIX, id="semantic.E013"))
    return errors


UNMANAGED_HINT = (
    "Run the SQL above on the table (makemigrations and migrate never change an unmanaged model's "
    "table), or make the model managed. Until then the sweep skips this field and semantic_status reports it."
)


@checks.register(checks.Tags.database)
def check_unmanaged_tables(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An unmanaged model's table gets the field's columns from whoever owns it, never from
    migrate. Only with ``check --database``; a warning, because ``migrate`` and test runs
    check databases too, and a table that does not exist yet is not reported at all."""
    from semantic.registry import embedding_fields
    from semantic.schema import has_table, schema_problem

    errors: list[checks.CheckMessage] = []
    for alias in databases or []:
        if connections[alias].vendor != "postgresql":
            continue
        for model in apps.get_models():
            if model._meta.managed or model._meta.proxy or router.db_for_write(model) != alias:
                continue
            for field in (f for f in embedding_fields(model) if f.model is model):
                if not has_table(model, alias):
                    continue
                if problem := schema_problem(field, alias):
                    errors.append(checks.Warning(problem, hint=UNMANAGED_HINT, obj=field, id="semantic.W005"))
    return errors


@checks.register(checks.Tags.database)
def check_spec_columns(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A table made before 2026-11-27 whose spec column has its old name: the migration that
    renames it is not written or not applied (:mod:`semantic.spec_column`). A warning: the
    check also runs at the start of the ``migrate`` that renames it."""
    from semantic.registry import embedding_fields
    from semantic.schema import spec_column_problem

    warnings: list[checks.CheckMessage] = []
    for alias in databases or []:
        if connections[alias].vendor != "postgresql":
            continue
        for model in apps.get_models():
            if not model._meta.managed or model._meta.proxy or not router.allow_migrate_model(alias, model):
                continue
            for field in (f for f in embedding_fields(model) if f.model is model):
                if problem := spec_column_problem(field, alias):
                    what, fix = problem
                    warnings.append(checks.Warning(what, hint=fix, obj=field, id="semantic.W009"))
    return warnings


IDLE_SESSION_TIMEOUT = (
    "PostgreSQL ends sessions of this role that are idle for {timeout} (idle_session_timeout) on database "
    "{alias!r}, less than a worker waits for the embedding API ({wait:g} s: a request's TIMEOUT or a pause of "
    "MAX_BACKOFF). A worker's connection is idle while it waits, and holds its row locks: ended, the run fails "
    "after paying for the request, and so does every run after it."
)
IDLE_SESSION_TIMEOUT_HINT = (
    "Turn it off for the role the worker connects as, ALTER ROLE {role} SET idle_session_timeout = 0; "
    "or set it above {wait:g} s."
)


@checks.register(checks.Tags.database)
def check_idle_session_timeout(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A worker waiting for the API must keep its session (semantic.W012): PostgreSQL 14's
    ``idle_session_timeout``, which some providers and DBAs set, would end it at every request."""
    from semantic.conf import semantic_settings as conf

    warnings: list[checks.CheckMessage] = []
    wait = max(conf.TIMEOUT, conf.MAX_BACKOFF)
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        with connection.cursor() as cursor:
            # Milliseconds; 0 is off. No row before PostgreSQL 14, which has no such setting.
            cursor.execute(
                "SELECT setting::bigint, current_setting('idle_session_timeout'), current_user "
                "FROM pg_settings WHERE name = 'idle_session_timeout'"
            )
            row = cursor.fetchone()
        if row is None or not 0 < row[0] < wait * 1000:
            continue
        _, shown, role = row
        warnings.append(
            checks.Warning(
                IDLE_SESSION_TIMEOUT.format(timeout=shown, alias=alias, wait=wait),
                hint=IDLE_SESSION_TIMEOUT_HINT.format(role=connection.ops.quote_name(role), wait=wait),
                id="semantic.W012",
            )
        )
    return warnings
