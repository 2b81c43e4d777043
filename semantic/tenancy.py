"""Schemas per tenant on one database, as django-tenants keeps them.

django-tenants' database backend keeps each tenant's tables in a PostgreSQL schema of its
own and points a connection at one of them (``connection.set_tenant()``; its middleware
does so for each request, its ``tenant_command`` for a command). A django-q2 worker's
connection starts in the public schema and would find none of a tenant's rows. So:

- work queued names its schema, the public one too: :func:`carried` wraps the task in
  ``semantic.tasks.in_schema``, which runs it there (:func:`in_schema`), wherever the
  worker's connection was left by the task before;
- the sweep visits the public schema and every tenant's (:func:`schemas`), and in each only
  the models whose tables the project's router puts there (:func:`has_table`);
- what is shared by name across schemas, as PostgreSQL's advisory locks are, is told apart
  by the schema (:func:`tenant_schema`);
- what all tenants share, the rate limit of the API key, is kept in the public schema
  (:func:`public`).

Without django-tenants' backend, every function here leaves things as they are: a task is
queued as itself, the sweep visits the one schema there is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, models, router

#: The worker task that runs a task queued in a tenant's schema in that schema.
IN_SCHEMA_TASK = "semantic.tasks.in_schema"

#: Why a task queued in a tenant's schema is dropped: the tenant was deleted since.
TENANT_GONE = (
    "Dropped the task {task} queued in the schema {schema!r}: no tenant has that schema any more "
    "(deleted since the task was queued), so there is nothing left for it to embed."
)
#: Why it is left to the sweep: the schema does not have the app's tables as they are now.
NOT_MIGRATED = (
    "Left the task {task} queued in the schema {schema!r} to the sweep: the app's migrations are not all "
    "applied there yet (django-tenants is still creating the schema, or migrate_schemas has not run since "
    "a deploy), and until they are, its tables there are missing or incomplete. The sweep embeds the rows "
    "once they are applied."
)


def database() -> str:
    """The database that holds the tenants' schemas (django-tenants' ``TENANT_DB_ALIAS``)."""
    return getattr(settings, "TENANT_DB_ALIAS", DEFAULT_DB_ALIAS)


def uses_tenant_schemas(using: str) -> bool:
    """Whether the connection ``using`` is django-tenants' backend, with a tenant model set."""
    return hasattr(connections[using], "set_tenant") and hasattr(settings, "TENANT_MODEL")


def public_schema() -> str:
    """The name of the schema shared by all tenants (django-tenants' ``PUBLIC_SCHEMA_NAME``)."""
    return getattr(settings, "PUBLIC_SCHEMA_NAME", "public")


def tenant_schema(using: str) -> str | None:
    """The tenant schema the connection ``using`` works in now; None in the public schema,
    or in a project without schemas per tenant."""
    if not uses_tenant_schemas(using):
        return None
    name = connections[using].schema_name
    return None if name in (None, public_schema()) else name


def carried(func: str, args: Sequence[Any], using: str, model: type[models.Model] | None = None) -> list[Any]:
    """The task to queue for ``func(*args)``, as ``[function, *arguments]``: itself, or, from
    a tenant's schema, ``semantic.tasks.in_schema`` carrying the schema and the database.
    Not for ``model``'s rows when its table is in the public schema (a shared app's, saved in
    a tenant's request): their passages and failure records are kept there too.

    A project without schemas per tenant queues exactly what it did before they were
    supported, so its queued tasks and the sweep's look-ups of them do not change.
    """
    if not uses_tenant_schemas(using):
        return [func, *args]
    # The public schema is named too: a worker's connection is where its last task left it
    # (a project's own task that set a tenant and did not set it back).
    schema = tenant_schema(using) if model is None else home(model, using)
    return [IN_SCHEMA_TASK, schema or public_schema(), using, func, *args]


def home(model: type[models.Model], using: str) -> str | None:
    """The tenant schema whose table holds the ``model`` rows the connection ``using`` sees now:
    the one it works in, or None for the public schema (a shared app's model, seen from a tenant's)."""
    schema = tenant_schema(using)
    return schema if schema is not None and has_table(model, using) else None


@contextmanager
def in_schema(using: str, schema: str | None) -> Iterator[str | None]:
    """Point the connection ``using`` at the tenant whose schema is ``schema`` (None: the public
    schema) for the block, then back where it was. Yields None; or, changing nothing, why work
    cannot be done there: no tenant has that schema any more (:data:`TENANT_GONE`), or it does not
    have the app's tables yet (:data:`NOT_MIGRATED`, see :func:`migrated`), each a message to format
    with ``task`` and ``schema``. Without schemas per tenant, changes nothing."""
    if not uses_tenant_schemas(using):
        yield None
        return
    if schema in (None, public_schema()):
        with _pointed_at(using, None):
            yield None
        return
    with _pointed_at(using, None):
        tenant = _tenants(using).filter(schema_name=schema).first()
        ready = tenant is not None and migrated(using, [schema])
    if tenant is not None and multi_type():
        # The tenant row at hand: a schema's name may have been given to a tenant of another type.
        _types[schema] = getattr(tenant, settings.MULTI_TYPE_DATABASE_FIELD)
    if tenant is None or not ready:
        yield TENANT_GONE if tenant is None else NOT_MIGRATED
        return
    with _pointed_at(using, tenant):
        yield None


def schemas(using: str) -> list[str | None]:
    """The schemas the sweep visits on ``using``: the public one (None) and every tenant's that
    has the app's tables (:func:`migrated`): a tenant's row is saved before django-tenants creates
    its schema, and the schema exists before its migrations are applied."""
    if not uses_tenant_schemas(using):
        return [None]
    with _pointed_at(using, None):
        names = list(_tenants(using).exclude(schema_name=public_schema()).values_list("schema_name", flat=True))
        return [None, *sorted(migrated(using, names))]


def migrated(using: str, names: Sequence[str]) -> set[str]:
    """The schemas among ``names`` that exist and record the app's last migrations as applied.

    django-tenants makes a new tenant's schema and then applies every migration in it, in one
    ``migrate_schemas``; an app whose label sorts before ``semantic`` gets its tables and rows
    (a data migration's) first. Working in such a schema would find the app's tables missing
    there, and PostgreSQL would take the public schema's, next on the ``search_path``: a tenant's
    passages written among the public schema's.
    """
    if not names:
        return set()
    quote = connections[using].ops.quote_name
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) "
            "AND to_regclass(format('%%I.django_migrations', nspname)) IS NOT NULL",
            [list(names)],
        )
        there = [name for (name,) in cursor.fetchall()]
        if not there:
            return set()
        leaves = _last_migrations()
        # One statement for all schemas: a schema's name can only be written into the SQL.
        cursor.execute(
            " UNION ALL ".join(
                f"SELECT %s FROM {quote(name)}.django_migrations WHERE app = 'semantic' AND name = ANY(%s) "
                "HAVING count(*) = %s"
                for name in there
            ),
            [value for name in there for value in (name, leaves, len(leaves))],
        )
        return {name for (name,) in cursor.fetchall()}


def dropped(using: str) -> bool:
    """Whether the connection ``using`` works in a tenant schema that no longer has the app's tables:
    the tenant was deleted (django-tenants' ``auto_drop_schema``) while work ran there. What would be
    written in that schema's tables then goes to the public schema's, next on the ``search_path``."""
    schema = tenant_schema(using)
    return schema is not None and not migrated(using, [schema])


@functools.cache
def _last_migrations() -> list[str]:
    """The names of the app's last migrations (the leaves of its graph): applied in a schema, all are."""
    from django.db.migrations.loader import MigrationLoader

    return [name for _, name in MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes("semantic")]


class SchemaInLog(logging.Filter):
    """Names the tenant schema in the app's log lines of work done in one: ``[alpha] ...``."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A line about another schema than the connection's (a task dropped for a deleted tenant) names it.
        schema = getattr(record, "tenant_schema", None) or tenant_schema(database())
        if schema is not None and not getattr(record, "tenant_schema_shown", False):
            record.tenant_schema, record.tenant_schema_shown = schema, True
            prefix = f"[{schema}] ".replace("%", "%%") if record.args else f"[{schema}] "
            record.msg = prefix + str(record.msg)
        return True


def has_table(model: type[models.Model], using: str) -> bool:
    """Whether the schema the connection ``using`` works in has ``model``'s table: django-tenants'
    router answers by the schema (``SHARED_APPS`` for the public one, ``TENANT_APPS`` for tenants',
    or the tenant type's apps). Always true without schemas per tenant."""
    if not uses_tenant_schemas(using):
        # A database without schemas (or a project without tenants): in a tenants project, its
        # models are the public pass's, so the sweep and all_tenants_command meet their rows once.
        return tenant_schema(database()) is None
    tenant = connections[using].tenant
    if multi_type() and tenant.schema_name != public_schema() and tenant.get_tenant_type() is None:
        # schema_context() points the connection by the schema's name alone, and the router reads
        # the tenant's type (TENANT_TYPES[None]: KeyError): the type is the tenant row's.
        kind = _tenant_type(using, tenant.schema_name)
        return kind is None or listed_app(model._meta.app_label, settings.TENANT_TYPES[kind]["APPS"])
    return router.allow_migrate_model(using, model)


def in_public_schema(model: type[models.Model]) -> bool:
    """Whether ``model``'s rows are the public pass's: its app is one of the public schema's
    (``SHARED_APPS``, or the public type's apps), or its database has no schemas per tenant."""
    if not uses_tenant_schemas(router.db_for_write(model)):
        return True
    names = settings.TENANT_TYPES[public_schema()]["APPS"] if multi_type() else getattr(settings, "SHARED_APPS", [])
    return listed_app(model._meta.app_label, names)


def app_lists() -> list[tuple[str, list[str], bool]]:
    """django-tenants' lists of apps, each with the setting that holds it and whether it is the
    public schema's: ``SHARED_APPS`` and ``TENANT_APPS``, or each of ``TENANT_TYPES``' ``APPS``."""
    if multi_type():
        return [
            (f"TENANT_TYPES[{kind!r}]['APPS']", list(spec.get("APPS", [])), kind == public_schema())
            for kind, spec in settings.TENANT_TYPES.items()
        ]
    shared, tenant = getattr(settings, "SHARED_APPS", None), getattr(settings, "TENANT_APPS", None)
    if shared is None or tenant is None:
        return []
    return [("SHARED_APPS", list(shared), True), ("TENANT_APPS", list(tenant), False)]


def listed_app(label: str, names: list[str]) -> bool:
    """Whether the installed app ``label`` is in ``names``, by its module or its AppConfig's path
    (as django-tenants' router reads those lists)."""
    config = apps.app_configs.get(label)
    return config is not None and (config.name in names or f"{config.__module__}.{type(config).__name__}" in names)


def multi_type() -> bool:
    """Whether tenants are of several types, each with apps of its own (django-tenants' ``TENANT_TYPES``)."""
    return bool(getattr(settings, "HAS_MULTI_TYPE_TENANTS", False))


def scope(using: str) -> str:
    """What keys of things kept for a schema's rows (the admin's cached duplicate pairs and topics)
    begin with: the schema the connection ``using`` works in, with schemas per tenant; else nothing."""
    if not uses_tenant_schemas(using):
        return ""
    # A digest: schema names may hold spaces, which memcached refuses in a key.
    return hashlib.blake2b(connections[using].schema_name.encode(), digest_size=8).hexdigest() + ":"


#: Each tenant schema's type, once read (multi-type tenants), and read again whenever work enters the
#: schema (:func:`in_schema`): a deleted tenant's schema name may be given to one of another type.
_types: dict[str, str | None] = {}


def _tenant_type(using: str, schema: str) -> str | None:
    if schema not in _types:
        field = settings.MULTI_TYPE_DATABASE_FIELD
        kind = _tenants(using).filter(schema_name=schema).values_list(field, flat=True).first()
        if kind is None:
            return None  # no tenant row yet: asked again next time
        _types[schema] = kind
    return _types[schema]


def at_home(model: type[models.Model], using: str) -> contextlib.AbstractContextManager[None]:
    """The connection ``using`` in the public schema for the block when ``model``'s rows are there
    and it works in a tenant's (a shared app's model): where the app keeps what it knows of them."""
    return public(using) if home(model, using) is None else contextlib.nullcontext()


@contextmanager
def public(using: str) -> Iterator[None]:
    """The connection ``using`` in the public schema for the block, for what all tenants share
    (the rate limit of the API key they share), then back in its tenant's schema."""
    if tenant_schema(using) is None:
        yield
        return
    with _pointed_at(using, None):
        yield


def current(using: str) -> Any:
    """Where the connection ``using`` points now (django-tenants' tenant, the public schema's
    included), for another thread's connection to point there too (:func:`pointed_as`); None
    without schemas per tenant. A new connection starts in the public schema."""
    return connections[using].tenant if uses_tenant_schemas(using) else None


def pointed_as(using: str, tenant: Any) -> contextlib.AbstractContextManager[None]:
    """The connection ``using`` pointed at ``tenant``, from :func:`current`, for the block."""
    return contextlib.nullcontext() if tenant is None else _pointed_at(using, tenant)


def _tenants(using: str) -> models.QuerySet:
    return apps.get_model(settings.TENANT_MODEL)._default_manager.using(using)


@contextmanager
def _pointed_at(using: str, tenant: Any) -> Iterator[None]:
    """The connection pointed at ``tenant`` (None: the public schema) for the block."""
    connection = connections[using]
    previous, include_public = connection.tenant, connection.include_public_schema
    if tenant is None:
        connection.set_schema_to_public()
    else:
        connection.set_tenant(tenant)
    try:
        yield
    finally:
        connection.set_tenant(previous, include_public)
        # django-tenants sets the search_path when the next cursor is opened; a cursor opened
        # before the block (a search's, whose text the block's rate limit was for) would run its
        # statement in the block's schema. So it is set again now, unless the transaction failed:
        # the next cursor sets it then.
        if connection.connection is not None and not connection.needs_rollback:
            with contextlib.suppress(DatabaseError):
                connection.cursor().close()
