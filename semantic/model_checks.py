"""System checks of the project's models, reported by ``manage.py check``: each
EmbeddingField and KeywordIndex as declared, and the managers of a model with an
EmbeddingField and the databases it is migrated to.

The settings are checked in :mod:`semantic.checks`.
"""

from __future__ import annotations

import inspect
from typing import Any

from django.apps import apps
from django.core import checks
from django.db import connections, models, router
from django.db.models.query_utils import DeferredAttribute
from django.utils.functional import cached_property

from semantic import tenancy
from semantic.checks import backend_for_checks
from semantic.conf import semantic_settings as conf

DIMENSIONS_UNMADE = "{label} stores {dimensions} dimensions, which {model_id} cannot make: its rows stay pending."
LOCAL_DIMENSIONS_HINT = (
    "The local model embeds because no Gemini API key is set here: set GEMINI_API_KEY (or "
    "SEMANTIC['API_KEY']) wherever this field is embedded. To embed it locally instead, set "
    "dimensions={default} on the field, then makemigrations and migrate (no column changes)."
)
DIMENSIONS_HINT = (
    "Set dimensions={default} on the field, then makemigrations and migrate (no column changes; "
    "the rows are embedded again), or pin an embedding_model that makes this size."
)
UNBOUNDED_COLUMN = (
    "{label}: KeywordIndex {index!r} indexes {field!r}, whose expression takes the words of whole texts: "
    "saving a row of many distinct words (from about 170,000 characters) fails with PostgreSQL's "
    '"string is too long for tsvector".'
)
UNBOUNDED_COLUMN_HINT = (
    "Index at most 100,000 characters: wrap the long fields in Left(), e.g. "
    'SearchVector("title", Left("body", 100_000), config="english"), then makemigrations; '
    "PostgreSQL cannot change a generated column's expression, so in that migration replace the "
    "AlterField of the column with a RemoveField and an AddField of it, as Django's own error says "
    "(README: Keyword and meaning together)."
)
#: semantic.E011: the app keeps what it knows of a row (failures, passages, dismissed
#: pairs) under the row's one primary key value, which a composite key does not have.
COMPOSITE_KEY = (
    "{model} has a composite primary key ({columns}), which its EmbeddingField {field!r} does not support: "
    "the app records each row's failures, passages and dismissed pairs under one primary key value."
)
COMPOSITE_KEY_HINT = (
    "Give {model} a single-column primary key (remove the CompositePrimaryKey to get the default id) "
    "and keep its columns unique with Meta.constraints = [models.UniqueConstraint(fields={columns}, "
    "name=...)], then makemigrations and migrate."
)

#: semantic.W003's hint. ``config`` is part of the index's migration state, so following it
#: writes a migration even where the index's SQL stays the same: the hint says so.
KEYWORD_CONFIG_HINT = (
    "Pass config={config!r} to the KeywordIndex; makemigrations then writes a migration that drops and "
    "rebuilds the index, which blocks writes to the table while it builds. Or build the column in the "
    "configuration queries should use."
)
#: PostgreSQL's longest identifier (NAMEDATALEN - 1); longer names are cut, and Django refuses them.
MAX_COLUMN_NAME = 63
NAME_TOO_LONG = (
    "The name of {label} is too long: the field keeps hidden columns named after it, and "
    "{column!r} has {length} characters, more than PostgreSQL's {limit}."
)
NAME_TOO_LONG_HINT = (
    "Give the field a name of at most {most} characters (db_column does not rename the hidden columns), "
    "then makemigrations."
)
#: semantic.W010: a manager built for the semantic methods whose get_queryset() names
#: another QuerySet class, as django-treebeard's MP_NodeManager does.
QUERYSET_WITHOUT_METHODS = (
    "{model}.{manager} was built with from_queryset({intended}), which has the semantic methods, but "
    "{manager_class}.get_queryset() returns a {actual}, which has not: {model}.{manager}.similar_to() "
    "raises AttributeError."
)
QUERYSET_WITHOUT_METHODS_HINT = (
    "{manager_class}.get_queryset() builds its QuerySet by name instead of from_queryset()'s class. "
    "Subclass {manager_class}, override get_queryset() to return {intended}(self.model, using=self._db) "
    "with what the original adds to it (such as its order_by()), and build the manager from that "
    "subclass: from_queryset({intended})() (README: Searching)."
)


@checks.register(checks.Tags.models)
def check_fields(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from semantic.registry import embedding_fields

    try:
        backend_class = conf.BACKEND
    except ImportError:
        return []  # reported by check_backend
    errors: list[checks.CheckMessage] = []
    configs = app_configs or apps.get_app_configs()
    for model in (m for config in configs for m in config.get_models()):
        for field in embedding_fields(model):
            if field.model is not model:
                continue  # a proxy or multi-table child: checked on the model that declares it
            if isinstance(model._meta.pk, models.CompositePrimaryKey):
                errors.append(_composite_key(model, field))
                continue
            if long_name := _name_too_long(model, field):
                errors.append(long_name)
                continue
            errors += _check_field(model, field, backend_for_checks(backend_class, field.embedding_model))
    return errors


def _composite_key(model: type[models.Model], field: Any) -> checks.CheckMessage:
    columns = list(model._meta.pk.field_names)
    return checks.Error(
        COMPOSITE_KEY.format(model=model._meta.label, columns=", ".join(columns), field=field.name),
        hint=COMPOSITE_KEY_HINT.format(model=model._meta.label, columns=columns),
        obj=field,
        id="semantic.E011",
    )


def _name_too_long(model: type[models.Model], field: Any) -> checks.CheckMessage | None:
    """Django reports the hidden columns' names only at ``migrate`` (models.E018), after
    ``makemigrations`` wrote them, with a hint (``db_column``) the user cannot follow."""
    companions = (field.embedded_hash_name, field.spec_name, field.pending_since_name, field.source_hash_name)
    column = max(companions, key=len)
    if len(column) <= MAX_COLUMN_NAME:
        return None
    return checks.Error(
        NAME_TOO_LONG.format(
            label=f"{model._meta.label}.{field.name}", column=column, length=len(column), limit=MAX_COLUMN_NAME
        ),
        hint=NAME_TOO_LONG_HINT.format(most=MAX_COLUMN_NAME - (len(column) - len(field.name))),
        obj=field,
        id="semantic.E014",
    )


def _check_field(model: type[models.Model], field: Any, backend: Any) -> list[checks.CheckMessage]:
    from semantic.registry import embedding_fields
    from semantic.switch import UNKNOWN_REPLACED, UNKNOWN_REPLACED_HINT, once_had

    errors: list[checks.CheckMessage] = []
    label = f"{model._meta.label}.{field.name}"
    if backend is not None and field.dimensions not in backend.supported_dimensions:
        # A warning, not an error: which backend embeds depends on the machine (a key or
        # not), and an error would stop migrate, test and runserver where the key is not
        # set, such as a CI job without secrets. That field's runs stop, saying the same.
        errors.append(
            checks.Warning(
                DIMENSIONS_UNMADE.format(label=label, dimensions=field.dimensions, model_id=backend.model_id),
                hint=(LOCAL_DIMENSIONS_HINT if backend.name == "local" else DIMENSIONS_HINT).format(
                    default=backend.default_dimensions
                ),
                obj=field,
                id="semantic.W004",
            )
        )
    if field.replaces:
        try:
            replaced = model._meta.get_field(field.replaces)
        except Exception:
            replaced = None  # deleted since (its migrations had it) or never a field: a typo
        if field.replaces == field.name or (replaced is not None and not isinstance(replaced, type(field))):
            errors.append(
                checks.Error(
                    f"{label} replaces {field.replaces!r}, which is not another EmbeddingField of {model._meta.label}.",
                    hint="replaces names the EmbeddingField this one takes over from (see semantic.switch).",
                    obj=field,
                    id="semantic.E007",
                )
            )
        elif replaced is None and not once_had(model, field.replaces):
            names = ", ".join(f.name for f in embedding_fields(model))
            errors.append(
                checks.Error(
                    UNKNOWN_REPLACED.format(
                        label=model._meta.label, field=field.name, replaced=field.replaces, names=names
                    ),
                    hint=UNKNOWN_REPLACED_HINT,
                    obj=field,
                    id="semantic.E007",
                )
            )
    if field.embedding_model and backend is not None and backend.name == "local":
        errors.append(
            checks.Warning(
                f"{label} sets embedding_model={field.embedding_model!r}, but the local backend always runs "
                "its own model; its vectors are stored under that name.",
                hint="Set SEMANTIC['API_KEY'] to embed with the Gemini model, or drop embedding_model.",
                obj=field,
                id="semantic.W001",
            )
        )
    for name in field.text_parts():
        attr = inspect.getattr_static(model, name, None)
        if name in field.python_parts and not isinstance(attr, DeferredAttribute):
            valid = callable(attr) or isinstance(attr, (property, cached_property, staticmethod, classmethod))
        else:
            try:
                valid = isinstance(model._meta.get_field(name), (models.CharField, models.TextField))
            except Exception:
                valid = False
        if not valid:
            errors.append(
                checks.Error(
                    f"{label} reads its text from {name!r}, which is not a text field, method or property of "
                    f"{model._meta.label}.",
                    hint="source and title_source name CharFields, TextFields, or methods or properties "
                    "returning text (a method takes no arguments).",
                    obj=field,
                    id="semantic.E006",
                )
            )
    return errors


#: semantic.E008: a model with an EmbeddingField may live on a database the app's tables may not.
TABLES_MISSING = (
    "{model} can be migrated to database {alias!r}, but the semantic app cannot: the records the app "
    "keeps beside {model}'s rows (failures, passages) are looked for there, in tables that would not exist."
)
TABLES_MISSING_HINT = (
    "Make your database router's allow_migrate() return True for app_label 'semantic' on {alias!r} "
    "(for example, first: if app_label == 'semantic': return True), then run "
    "'manage.py migrate --database={alias}'."
)


#: semantic.E019: the app's own models are used on a database the router does not let the app migrate.
OWN_TABLES_MISSING = (
    "The semantic app's own records ({models}) are read and written on database {alias!r}, where your "
    "router sends them, but the router does not let the semantic app migrate there: its tables would not "
    "exist, and the admin's pages and every embedding run would fail on them."
)
OWN_TABLES_MISSING_HINT = (
    "Make your database router's allow_migrate() return True for app_label 'semantic' on {alias!r} too "
    "(besides each database holding a model with an EmbeddingField), then run 'manage.py migrate --database={alias}'."
)


@checks.register(checks.Tags.models)
def check_databases(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Wherever a model with an EmbeddingField is migrated, the app's tables are too: its
    queries ask them about the model's rows in SQL, on the model's own database."""
    from semantic.registry import embedding_fields

    own_models = list(apps.get_app_config("semantic").get_models())
    errors: list[checks.CheckMessage] = []
    configs = app_configs or apps.get_app_configs()
    for model in (m for config in configs for m in config.get_models()):
        if not any(field.model is model for field in embedding_fields(model)):
            continue  # no field, or one checked on the model that declares it
        for alias in connections:
            if router.allow_migrate_model(alias, model) and not all(
                router.allow_migrate_model(alias, own) for own in own_models
            ):
                errors.append(
                    checks.Error(
                        TABLES_MISSING.format(model=model._meta.label, alias=alias),
                        hint=TABLES_MISSING_HINT.format(alias=alias),
                        obj=model,
                        id="semantic.E008",
                    )
                )
    unmigrated: dict[str, list[str]] = {}
    for own in own_models:
        alias = router.db_for_write(own)
        if tenancy.uses_tenant_schemas(alias):
            continue  # django-tenants' router answers for the current schema; semantic.E017 checks its app lists
        if not router.allow_migrate_model(alias, own):
            unmigrated.setdefault(alias, []).append(own._meta.label)
    for alias, labels in unmigrated.items():
        errors.append(
            checks.Error(
                OWN_TABLES_MISSING.format(models=", ".join(labels), alias=alias),
                hint=OWN_TABLES_MISSING_HINT.format(alias=alias),
                id="semantic.E019",
            )
        )
    return errors


@checks.register(checks.Tags.models)
def check_keyword_indexes(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A KeywordIndex over a generated column parses queries in its own ``config``: it
    must be the column's, or stemmed query words miss the column's words."""
    from semantic.keyword_index import KeywordIndex, column_config, unbounded_column

    errors: list[checks.CheckMessage] = []
    configs = app_configs or apps.get_app_configs()
    for model in (m for config in configs for m in config.get_models()):
        for index in model._meta.indexes:
            if not isinstance(index, KeywordIndex):
                continue
            built_in = column_config(model, index.keyword_fields)
            if built_in is not None and built_in != index.config:
                errors.append(
                    checks.Warning(
                        f"{model._meta.label}: KeywordIndex {index.name!r} parses queries in {index.config!r}, "
                        f"but {index.keyword_fields[0]!r} holds words in {built_in!r}.",
                        hint=KEYWORD_CONFIG_HINT.format(config=built_in),
                        obj=model,
                        id="semantic.W003",
                    )
                )
            if unbounded_column(model, index.keyword_fields):
                message = UNBOUNDED_COLUMN.format(
                    label=model._meta.label, index=index.name, field=index.keyword_fields[0]
                )
                errors.append(checks.Warning(message, hint=UNBOUNDED_COLUMN_HINT, obj=model, id="semantic.W007"))
    return errors


@checks.register(checks.Tags.models)
def check_managers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A manager built to search (``from_queryset()`` of a QuerySet with the mixin) must
    give querysets that can.

    A plain manager is left alone: the README lets the default manager be one, and the
    admin and the commands add the methods themselves. Only a manager whose class shows
    the recipe was followed is checked, so the warning never asks for a manager nobody wanted.
    """
    from semantic.query import SemanticQuerySetMixin
    from semantic.registry import embedding_fields

    errors: list[checks.CheckMessage] = []
    configs = app_configs or apps.get_app_configs()
    for model in (m for config in configs for m in config.get_models()):
        if not embedding_fields(model):
            continue
        for manager in model._meta.managers:
            intended = getattr(manager, "_queryset_class", None)
            if not (isinstance(intended, type) and issubclass(intended, SemanticQuerySetMixin)):
                continue
            try:
                queryset = manager.get_queryset()
            except Exception:
                continue  # a manager that needs a request or a database to build its queryset: cannot tell
            if isinstance(queryset, SemanticQuerySetMixin):
                continue
            names = {
                "model": model._meta.label,
                "manager": manager.name,
                "manager_class": _defined_by(type(manager), "get_queryset").__name__,
                "intended": intended.__name__,
                "actual": type(queryset).__name__,
            }
            errors.append(
                checks.Warning(
                    QUERYSET_WITHOUT_METHODS.format(**names),
                    hint=QUERYSET_WITHOUT_METHODS_HINT.format(**names),
                    obj=model,
                    id="semantic.W010",
                )
            )
    return errors


def _defined_by(cls: type, name: str) -> type:
    """The class whose ``name`` ``cls`` runs: the library's manager, not the class from_queryset() made."""
    return next((base for base in cls.__mro__ if name in vars(base)), cls)
