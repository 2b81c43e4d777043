"""The spec column's name before 2026-11-27, and what keeps its values across the rename.

Versions before then named the column that records which model and size made a row's
vector ``<field>_model``; it is ``<field>_spec`` now. Old migrations hold the old name,
so upgrading needs a migration that renames it. ``makemigrations`` only asks ("Was
note.embedding_model renamed to note.embedding_spec?", default no), and ``--noinput``
answers no: it writes a ``RemoveField`` and an ``AddField``, which would drop every
row's record and leave every row stale (search empty until the whole table is embedded
again, paid again). :func:`carry_spec_values` makes such a pair copy the values across.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations
from django.db.migrations.operations.base import Operation

from semantic.fields import EmbeddingField

OLD_SUFFIX = "_model"
NEW_SUFFIX = "_spec"


def old_spec_name(field_name: str) -> str:
    """The spec column's name, for the EmbeddingField ``field_name``, before 2026-11-27."""
    return f"{field_name}{OLD_SUFFIX}"


class CopySpecValues(Operation):
    """Between the ``AddField`` of ``<field>_spec`` and the ``RemoveField`` of
    ``<field>_model``: the new column gets the old one's values (backwards: the old
    one gets them back), as a rename would have kept them."""

    reversible = True

    def __init__(self, model_name: str, field_name: str) -> None:
        self.model_name, self.field_name = model_name, field_name

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        self.copy(app_label, schema_editor, to_state, old_spec_name(self.field_name), f"{self.field_name}{NEW_SUFFIX}")

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        self.copy(app_label, schema_editor, to_state, f"{self.field_name}{NEW_SUFFIX}", old_spec_name(self.field_name))

    def describe(self) -> str:
        return f"Copies {self.model_name}.{old_spec_name(self.field_name)} into {self.field_name}{NEW_SUFFIX}"

    def copy(self, app_label: str, schema_editor: Any, state: Any, source: str, target: str) -> None:
        model = state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        fields = {f.name: f for f in model._meta.local_fields}
        if not isinstance(fields.get(self.field_name), EmbeddingField) or not {source, target} <= fields.keys():
            return  # not this app's columns after all: a project's own fields of these names
        quote = schema_editor.connection.ops.quote_name
        table, source, target = model._meta.db_table, fields[source].column, fields[target].column
        schema_editor.execute(
            f"UPDATE {quote(table)} SET {quote(target)} = {quote(source)} WHERE {quote(source)} IS NOT NULL"
        )


def carry_spec_values(operations: list[Any]) -> list[Any]:
    """``operations`` where each ``RemoveField`` of ``<field>_model`` with an ``AddField`` of
    ``<field>_spec`` on the same model comes after that ``AddField``, a
    :class:`CopySpecValues` between them.

    The removal can only move later: nothing after it names the removed column, and
    every step in between sees the column it saw before. Done once: a plan seen again
    (the same migration objects) already has its copies.
    """
    if any(isinstance(op, CopySpecValues) for op in operations):
        return operations
    added = {
        (op.model_name_lower, op.name): op
        for op in operations
        if isinstance(op, migrations.AddField) and op.name.endswith(NEW_SUFFIX)
    }
    moved: dict[int, list[Any]] = {}  # id of an AddField -> the steps that follow it
    kept = []
    for op in operations:
        kept.append(op)
        if not isinstance(op, migrations.RemoveField) or not op.name.endswith(OLD_SUFFIX):
            continue
        field_name = op.name.removesuffix(OLD_SUFFIX)
        add = added.get((op.model_name_lower, f"{field_name}{NEW_SUFFIX}"))
        if add is None:
            continue
        steps = [CopySpecValues(op.model_name, field_name), op]
        if operations.index(add) < operations.index(op):
            kept[-1:] = steps  # the new column is there already
        else:
            kept.pop()
            moved[id(add)] = steps
    return [step for op in kept for step in (op, *moved.get(id(op), []))]
