"""Changing model or dimensions with no moment where search returns garbage or nothing.

Vectors from two models (or two sizes) cannot be compared, so a new model needs new
vectors for every row before queries may use it. The switch therefore goes through a
second field::

    class Question(models.Model):
        embedding = EmbeddingField(source=("title", "body"), dimensions=384)
        embedding_v2 = EmbeddingField(
            source=("title", "body"), embedding_model="gemini-embedding-001",
            dimensions=768, replaces="embedding",
        )

1. ``makemigrations`` and ``migrate`` add the new column. From then on every save
   embeds both fields, and queries (``similar_to()``, ``duplicates()``, the admin)
   keep using ``embedding``.
2. ``manage.py semantic_embed questions.Question.embedding_v2 --switch`` fills the
   new field, checks that every row with text has a current vector in it, and then,
   by writing one row, makes queries for ``embedding`` use ``embedding_v2``. Rows
   whose text the API refuses for good do not hold it up (no run can embed them until
   their text changes); the command names them.
3. When you are happy, delete ``embedding`` from the model and make a migration.
   Code that names ``field="embedding"`` keeps working: it is served by the field
   that replaces it. ``migrate`` refuses to remove it before step 2 while the new
   field lacks vectors (:class:`semantic.migration_hooks.SwitchFirst`).

``semantic_embed questions.Question.embedding --switch`` switches back while both
fields exist. A later change (``embedding_v3`` with ``replaces="embedding_v2"``) goes
the same way, and once switched it serves every name before it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.db import models, router, transaction

from semantic.fields import EmbeddingField
from semantic.registry import embedding_fields, get_embedding_field

NOT_REPLACING = (
    "{label}.{field} does not replace another field: add replaces='<old field>' to it, "
    "or name the field queries should switch to."
)
#: semantic.E007 and ``--switch``: a ``replaces`` that names nothing the model has or had.
UNKNOWN_REPLACED = (
    "{label}.{field} replaces {replaced!r}, which is neither a field of {label} nor one its migrations "
    "ever had (a misspelt name?). Its EmbeddingFields: {names}."
)
UNKNOWN_REPLACED_HINT = (
    "Set replaces= to the name of the EmbeddingField this one takes over from (see semantic.switch), "
    "then makemigrations."
)
INCOMPLETE = (
    "{label}.{field} is not ready to serve queries: {rows} rows still need embedding "
    "(pending, stale, or failed and to be tried again). Run `manage.py semantic_embed {label}.{field}` (and "
    "`--failed` for failed rows), then switch again."
)


@dataclasses.dataclass
class Switched:
    """What :func:`switch_to` did: ``original`` is the name whose queries ``field`` now serves;
    ``rejected`` the keys of rows left out of its search, whose text the API refuses."""

    original: str
    field: str
    rejected: list[Any]


def successors(model: type[models.Model], field: EmbeddingField) -> list[EmbeddingField]:
    """The fields declared with ``replaces=field.name``."""
    return [f for f in embedding_fields(model) if f.replaces == field.name and f is not field]


def primary_fields(model: type[models.Model]) -> list[EmbeddingField]:
    """The fields a query may mean without naming one: a field taking over from one
    that still exists is not a choice of its own."""
    fields = embedding_fields(model)
    names = {f.name for f in fields}
    return [f for f in fields if not (f.replaces and f.replaces in names)]


def serving_field(model: type[models.Model], name: str | None = None) -> EmbeddingField:
    """The field that answers queries for ``name`` (or for the model, with ``name=None``).

    A field that replaces another stands by until it is switched on; after that it
    serves queries for the field it replaces, even once that field is deleted. Switches
    chain: after a second model change (``embedding`` to ``embedding_v2`` to
    ``embedding_v3``), every name along the way is served by the last field switched to.
    """
    fields = embedding_fields(model)
    label = model._meta.label
    if name is None:
        primary = primary_fields(model)
        if len(primary) > 1:
            listed = ", ".join(f.name for f in primary)
            raise ValueError(f"{label} has several EmbeddingFields ({listed}); pass field=<name>.")
        if not primary:
            return get_embedding_field(model)  # says the model has none
        name = primary[0].name
    by_name = {f.name: f for f in fields}
    field = by_name.get(name)
    if field is None:
        heirs = [f for f in fields if f.replaces == name]
        if not heirs:
            return get_embedding_field(model, name)  # says which names exist
        # A deleted field's queries go to the field that replaced it (migrate refuses to
        # delete it before the switch while that field is not filled: semantic.migration_hooks).
        field = next((f for f in heirs if len(heirs) == 1 or f.name == _switches(label).get(name)), heirs[0])
    if not any(f.replaces for f in fields if f is not field):
        return field  # nothing to switch to: no query
    switches = _switches(label)
    seen = {field.name}
    while (heir := by_name.get(switches.get(field.name, ""))) is not None and heir.replaces == field.name:
        if heir.name in seen:
            break
        seen.add(heir.name)
        field = heir
    return field


def _switches(label: str) -> dict[str, str]:
    """The model's switches: field name -> the field serving its queries."""
    from semantic.models import FieldSwitch

    return dict(FieldSwitch.objects.filter(model_label=label).values_list("field_name", "serving_field"))


def switched_name(model: type[models.Model], field: EmbeddingField) -> str:
    """The field whose queries ``field`` would serve once switched to; ``ValueError`` when none.

    A field declared with ``replaces=`` serves the one it replaces; an original field that
    has one serves itself again (switching back).
    """
    if field.replaces:
        if problem := unknown_replaced(model, field):
            raise ValueError(problem)
        return field.replaces
    if successors(model, field):
        return field.name
    raise ValueError(NOT_REPLACING.format(label=model._meta.label, field=field.name))


def unknown_replaced(model: type[models.Model], field: EmbeddingField) -> str | None:
    """:data:`UNKNOWN_REPLACED` when ``field.replaces`` names no field the model has or
    ever had, else None.

    A field that was switched to and whose predecessor was then deleted still replaces a
    real name: its migrations added that field (or a switch recorded it, for history
    squashed away). A name neither knows is a typo, and a switch to it would redirect
    nothing while making the model's searches ask which field to use.
    """
    from semantic.models import FieldSwitch  # the app's tables: not importable while apps load

    name = field.replaces
    if not name or name in {f.name for f in model._meta.get_fields()} or once_had(model, name):
        return None
    if FieldSwitch.objects.filter(model_label=model._meta.label, field_name=name).exists():
        return None
    names = ", ".join(f.name for f in embedding_fields(model))
    return UNKNOWN_REPLACED.format(label=model._meta.label, field=field.name, replaced=name, names=names)


def once_had(model: type[models.Model], name: str) -> bool:
    """Whether a migration of the model's app (on disk; no database needed) ever gave the
    model, under this or an earlier name, a field called ``name``."""
    from django.db.migrations import operations
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.operations.fields import FieldOperation

    loader = MigrationLoader(None, ignore_no_migrations=True)
    app = model._meta.app_label
    steps = [
        step
        for (label, _), migration in loader.disk_migrations.items()
        if label == app
        for step in migration.operations
    ]
    renames = [(step.old_name_lower, step.new_name_lower) for step in steps if isinstance(step, operations.RenameModel)]
    models_named = {model._meta.model_name}
    while True:  # the model under every name it had
        more = {old for old, new in renames if new in models_named} | {
            new for old, new in renames if old in models_named
        }
        if more <= models_named:
            break
        models_named |= more
    for step in steps:
        if isinstance(step, operations.CreateModel) and step.name_lower in models_named:
            if any(field_name == name for field_name, _ in step.fields):
                return True
        elif isinstance(step, FieldOperation) and step.model_name_lower in models_named:
            if name in (step.name, getattr(step, "new_name", None)):  # AddField, RemoveField, RenameField ...
                return True
    return False


def ancestors(model: type[models.Model], field: EmbeddingField) -> list[str]:
    """The names ``field`` takes over from, nearest first: what it replaces, what that
    replaced, ..., up to a field that no longer exists or replaces nothing."""
    by_name = {f.name: f for f in embedding_fields(model)}
    names: list[str] = []
    current: EmbeddingField | None = field
    while current is not None and current.replaces and current.replaces not in names and current.replaces != field.name:
        names.append(current.replaces)
        current = by_name.get(current.replaces)
    return names


def switch_to(model: type[models.Model], field: EmbeddingField) -> Switched:
    """Make queries use ``field``: for every field it takes over from (what it replaces,
    and what that one replaced), or, for an original that has an heir, for itself again.

    Raises ``ValueError`` while any row with text lacks a current vector in ``field``,
    failed rows included, so a switch never leaves rows out of search. The exception is
    rows whose text the API refused for good: no run can embed them until their text
    changes, so they do not hold the switch up; they are returned in ``rejected``.
    """
    from semantic.models import DismissedPair, FieldSwitch
    from semantic.rows import rejected  # the app's tables: not importable while apps load

    label = model._meta.label
    switched_name(model, field)  # refuses a field that takes over from nothing
    names = ancestors(model, field)
    original = names[-1] if names else field.name
    needing = model._base_manager.filter(field.needs_embedding())
    left = needing.exclude(rejected(model, field)).count()
    if left:
        raise ValueError(INCOMPLETE.format(label=label, field=field.name, rows=left))
    left_out = list(needing.filter(rejected(model, field)).order_by("pk").values_list("pk", flat=True))
    # Pairs a reviewer marked "not a duplicate" are about the rows, not the model: the duplicate
    # review reads them under the serving field's name, so they follow the switch.
    before = serving_field(model, original).name
    if before != field.name:
        carried = DismissedPair.objects.filter(model_label=label, field_name=before)
        DismissedPair.objects.bulk_create(
            [
                DismissedPair(
                    model_label=label,
                    field_name=field.name,
                    first_pk=pair.first_pk,
                    second_pk=pair.second_pk,
                    dismissed_by=pair.dismissed_by,
                )
                for pair in carried
            ],
            ignore_conflicts=True,
        )
    # The field serves itself (not a successor it was switched to before), and each field it
    # takes over from is served by the next one down to it.
    with transaction.atomic(using=router.db_for_write(FieldSwitch)):
        FieldSwitch.objects.filter(model_label=label, field_name=field.name).delete()
        heir = field.name
        for name in names:
            FieldSwitch.objects.update_or_create(model_label=label, field_name=name, defaults={"serving_field": heir})
            heir = name
    return Switched(original, field.name, left_out)
