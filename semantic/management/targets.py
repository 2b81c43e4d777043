"""Naming models and fields on the command line: ``app_label.Model[.field]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.core.management.base import CommandError
from django.db import connections, models, router

from semantic import tenancy
from semantic.fields import EmbeddingField
from semantic.registry import embedding_fields
from semantic.schema import MIGRATION_NEEDED as MIGRATION_NEEDED
from semantic.schema import MISSING_COLUMN as MISSING_COLUMN
from semantic.schema import schema_problem

BAD_TARGET = "{target!r} is not app_label.Model or app_label.Model.field."
UNKNOWN_MODEL = "Unknown model {label!r}; models with an EmbeddingField: {known}."
NO_FIELD = "{label} has no EmbeddingField."
UNKNOWN_FIELD = "{label} has no EmbeddingField named {name!r}; it has {names}."
IN_TENANT_SCHEMAS = (
    "{labels}: the rows are in each tenant's schema, not in the public one this command ran in. "
    "Run it in every tenant's schema with `manage.py all_tenants_command <command>`, or in one "
    "with `manage.py tenant_command <command> --schema=<schema>`."
)
#: The same, from a command that names the model and stops: all_tenants_command, which runs it in
#: the public schema first when the public schema has a tenant row (django-tenants' setup makes
#: one), would stop there too.
IN_TENANT_SCHEMAS_STOPPED = (
    "{labels}: the rows are in each tenant's schema, not in the public one this command ran in. "
    "Run it in every tenant's schema with `manage.py all_tenants_command --no-public <command>`, or in one "
    "with `manage.py tenant_command <command> --schema=<schema>`."
)
IN_PUBLIC_SCHEMA = (
    "{labels}: the rows are in the public schema (a shared app's), not in the tenant schema {schema!r} "
    "this command ran in. Run it without tenant_command."
)
OTHER_TENANT_TYPES = (
    "{labels}: the tenant schema {schema!r} this command ran in has no table of them: their apps are "
    "other tenant types' (TENANT_TYPES)."
)
APP_MIGRATIONS_DUE = (
    "django-semantic's own tables are behind this version ({count} migration(s) not applied to "
    "the database {database!r}: {names}); run `manage.py migrate` first."
)


def resolve(target: str, *, anywhere: bool = False) -> list[tuple[type[models.Model], EmbeddingField]]:
    """The (model, field) pairs a target names: one field, or every one of a model. With schemas
    per tenant, refused when the model's rows are not in the schema the command runs in, unless
    ``anywhere``."""
    parts = target.split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise CommandError(BAD_TARGET.format(target=target))
    label = ".".join(parts[:2])
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise CommandError(UNKNOWN_MODEL.format(label=label, known=", ".join(known_models()) or "none")) from None
    fields = embedding_fields(model)
    if not fields:
        raise CommandError(NO_FIELD.format(label=model._meta.label))
    if len(parts) == 3:
        chosen = [f for f in fields if f.name == parts[2]]
        if not chosen:
            names = ", ".join(f.name for f in fields)
            raise CommandError(UNKNOWN_FIELD.format(label=model._meta.label, name=parts[2], names=names))
        fields = chosen
    if not anywhere and not tenancy.has_table(model, router.db_for_write(model)):
        raise CommandError(elsewhere([model], stopped=True))
    return [(model, field) for field in fields]


def resolve_all(
    targets: list[str], note: Callable[[str], Any] | None = None
) -> list[tuple[type[models.Model], EmbeddingField]]:
    """The (model, field) pairs the targets name (all by default). With schemas per tenant, only
    those whose rows are in the schema the command runs in; ``note`` hears which were left out.
    So ``all_tenants_command``, which runs a command in the public schema and each tenant's,
    meets each model's rows once, and goes on past the schemas that have none of them."""
    if targets:
        found = [pair for target in targets for pair in resolve(target, anywhere=True)]
    else:
        # A proxy's or a multi-table child's field belongs to the model that declares it.
        found = [(m, f) for m in apps.get_models() for f in embedding_fields(m) if f.model is m]
    here = [(m, f) for m, f in found if tenancy.has_table(m, router.db_for_write(m))]
    left_out = [m for m, f in found if (m, f) not in here]
    if left_out and note is not None:
        note(elsewhere(left_out))
    return here


def elsewhere(found: list[type[models.Model]], *, stopped: bool = False) -> str:
    """Why a command in this schema has none of these models' rows (schemas per tenant); ``stopped``
    when the command stops for it, rather than going on with the other models."""
    labels = ", ".join(sorted({model._meta.label for model in found}))
    schema = tenancy.tenant_schema(tenancy.database())
    if schema is None:
        return (IN_TENANT_SCHEMAS_STOPPED if stopped else IN_TENANT_SCHEMAS).format(labels=labels)
    if all(tenancy.in_public_schema(model) for model in found):
        return IN_PUBLIC_SCHEMA.format(labels=labels, schema=schema)
    return OTHER_TENANT_TYPES.format(labels=labels, schema=schema)


def known_models() -> list[str]:
    return sorted(m._meta.label for m in apps.get_models() if embedding_fields(m))


def threshold_type(value: Any) -> float:
    import argparse

    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not -1.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside -1..1 (cosine similarity)")
    return number


def check_app_migrated(resolved: list[tuple[type[models.Model], EmbeddingField]]) -> None:
    """Raise CommandError when this app's own migrations are not all applied to a database the
    ``resolved`` fields live in (after an upgrade): its commands would otherwise fail on a
    missing column."""
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.recorder import MigrationRecorder

    for using in dict.fromkeys(router.db_for_write(field.model) for _, field in resolved):
        if not MigrationRecorder(connections[using]).has_table():
            continue  # built from the models, not by migrations (a test database with MIGRATE False)
        executor = MigrationExecutor(connections[using])
        targets = [node for node in executor.loader.graph.leaf_nodes() if node[0] == "semantic"]
        due = [migration.name for migration, _ in executor.migration_plan(targets)]
        if due:
            raise CommandError(APP_MIGRATIONS_DUE.format(count=len(due), database=using, names=", ".join(due)))


def ready(
    resolved: list[tuple[type[models.Model], EmbeddingField]],
) -> list[tuple[type[models.Model], EmbeddingField]]:
    """``resolved``, once this app's tables are migrated and each field's table has its columns
    where the rows are read from; else CommandError saying what to run (a query would fail
    with a ProgrammingError from the middle of it)."""
    check_app_migrated(resolved)
    for model, field in resolved:
        if problem := schema_problem(field, router.db_for_read(model)):
            raise CommandError(problem)
    return resolved
