"""Stored rows that belong to no model or field any more.

Migrations keep the app's tables in step with renames and removals
(:mod:`semantic.migration_hooks`). Rows can still be left behind: by an app taken out
of ``INSTALLED_APPS``, by a removal made before that hook existed, or by migrating
backwards over a step that turned ``passages`` off. ``manage.py semantic_remove_stale``
lists them and deletes them, as Django's ``remove_stale_contenttypes`` does for content
types.

A row is stale when its model is not installed, or when its field is not an
``EmbeddingField`` of that model, unless a field switch still points that name at a
field that is (:mod:`semantic.switch`): then the reviewer's decisions and classifiers
stored under it stay, and only its passages and failures, which nothing reads, go.
Passages are also stale when their field no longer keeps passages; a field switch
whose serving field is gone, and a classifier whose label field is gone, are stale.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import models

from semantic.fields import EmbeddingField
from semantic.models import KEYED_BY_NAME, UNREAD_WITHOUT_FIELD, FieldSwitch, Passage
from semantic.registry import embedding_fields


@dataclass(frozen=True)
class Stale:
    """``rows`` of ``stored`` for ``model_label``.``field_name``, and why they are stale."""

    stored: type[models.Model]
    model_label: str
    field_name: str
    reason: str
    rows: models.QuerySet

    def __str__(self) -> str:
        count = self.rows.count()
        return f"{self.stored._meta.label}: {count} for {self.model_label}.{self.field_name} ({self.reason})"


def find_stale(using: str | None = None) -> list[Stale]:
    """Every group of stale rows, table by table."""
    found = []
    switched = set(FieldSwitch._base_manager.using(using).values_list("model_label", "field_name"))
    for stored in (apps.get_model("semantic", name) for name in KEYED_BY_NAME):
        rows = stored._base_manager.using(using)
        pairs = rows.values_list("model_label", "field_name").distinct().order_by("model_label", "field_name")
        for label, name in pairs:
            mine = rows.filter(model_label=label, field_name=name)
            reason = why_stale(stored, label, name, switched=(label, name) in switched)
            if reason:
                found.append(Stale(stored, label, name, reason, mine))
            elif KEYED_BY_NAME[stored._meta.object_name]:  # other columns naming a field of the model
                found.extend(stale_names(stored, label, name, mine))
    return found


def why_stale(stored: type[models.Model], label: str, name: str, *, switched: bool) -> str | None:
    """Why rows of ``stored`` for ``label``.``name`` are stale, or None if they are not."""
    model = installed(label)
    if model is None:
        return "no such model installed"
    fields = {f.name: f for f in embedding_fields(model)}
    field = fields.get(name)
    if field is None:
        if switched and stored._meta.object_name not in UNREAD_WITHOUT_FIELD:
            return None  # a field switch serves this name: see the module docstring
        return "no such EmbeddingField"
    if stored is Passage and not field.passages:
        return "the field keeps no passages"
    return None


def stale_names(stored: type[models.Model], label: str, name: str, rows: models.QuerySet) -> list[Stale]:
    """A switch whose serving field is gone; a classifier whose label field is gone."""
    model = installed(label)
    if model is None:
        return []
    (column,) = KEYED_BY_NAME[stored._meta.object_name]
    wanted = EmbeddingField if stored is FieldSwitch else models.Field  # a switch serves by an EmbeddingField
    found = []
    for value in rows.values_list(column, flat=True).distinct():
        try:
            present = isinstance(model._meta.get_field(value), wanted)
        except FieldDoesNotExist:
            present = False
        if not present:
            reason = f"its {column.replace('_', ' ')} {value!r} is gone"
            found.append(Stale(stored, label, name, reason, rows.filter(**{column: value})))
    return found


def installed(label: str) -> type[models.Model] | None:
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        return None
