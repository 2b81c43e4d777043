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
   by writing one row, makes queries for ``embedding`` use ``embedding_v2``.
3. When you are happy, delete ``embedding`` from the model and make a migration.
   Code that names ``field="embedding"`` keeps working: it is served by the field
   that replaces it.

``semantic_embed questions.Question.embedding --switch`` switches back while both
fields exist.
"""

from __future__ import annotations

from django.db import models

from semantic.fields import EmbeddingField, embedding_fields, get_embedding_field

NOT_REPLACING = (
    "{label}.{field} does not replace another field: add replaces='<old field>' to it, "
    "or name the field queries should switch to."
)
INCOMPLETE = (
    "{label}.{field} is not ready to serve queries: {rows} rows still need embedding "
    "(pending, stale or failed). Run `manage.py semantic_embed {label}.{field}` (and "
    "`--failed` for failed rows), then switch again."
)


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
    serves queries for the field it replaces, even once that field is deleted.
    """
    fields = embedding_fields(model)
    label = model._meta.label
    names = {f.name for f in fields}
    if name is None:
        primary = primary_fields(model)
        if len(primary) > 1:
            listed = ", ".join(f.name for f in primary)
            raise ValueError(f"{label} has several EmbeddingFields ({listed}); pass field=<name>.")
        if not primary:
            return get_embedding_field(model)  # says the model has none
        field = primary[0]
        name = field.replaces if field.replaces and field.replaces not in names else field.name
    field = next((f for f in fields if f.name == name), None)
    if field is None:
        heir = next((f for f in fields if f.replaces == name), None)
        return heir if heir is not None else get_embedding_field(model, name)  # says which names exist
    heirs = successors(model, field)
    if not heirs:
        return field
    from semantic.models import FieldSwitch

    serving = FieldSwitch.objects.filter(model_label=label, field_name=field.name).values_list(
        "serving_field", flat=True
    )
    chosen = serving.first()
    return next((f for f in heirs if f.name == chosen), field)


def switched_name(model: type[models.Model], field: EmbeddingField) -> str:
    """The field whose queries ``field`` would serve once switched to; ``ValueError`` when none.

    A field declared with ``replaces=`` serves the one it replaces; an original field that
    has one serves itself again (switching back).
    """
    if field.replaces:
        return field.replaces
    if successors(model, field):
        return field.name
    raise ValueError(NOT_REPLACING.format(label=model._meta.label, field=field.name))


def switch_to(model: type[models.Model], field: EmbeddingField) -> str:
    """Make queries use ``field``: for the field it replaces, or (for an original that
    has an heir) for itself again. Returns the name of the field whose queries it serves.

    Raises ``ValueError`` while any row with text lacks a current vector in ``field``,
    failed rows included, so a switch never leaves rows out of search.
    """
    from semantic.models import DismissedPair, FieldSwitch

    label = model._meta.label
    original_name = switched_name(model, field)
    left = model._base_manager.filter(field.needs_embedding()).count()
    if left:
        raise ValueError(INCOMPLETE.format(label=label, field=field.name, rows=left))
    # Pairs a reviewer marked "not a duplicate" are about the rows, not the model: the duplicate
    # review reads them under the serving field's name, so they follow the switch.
    before = serving_field(model, original_name).name
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
    if original_name == field.name:
        FieldSwitch.objects.filter(model_label=label, field_name=original_name).delete()
    else:
        FieldSwitch.objects.update_or_create(
            model_label=label, field_name=original_name, defaults={"serving_field": field.name}
        )
    return original_name
