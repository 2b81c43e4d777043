"""What this app stores about a model's rows follows the project's migrations.

The app's own tables (passages, embedding failures, pairs marked not duplicates, field
switches, Batch API jobs, classifiers) name a row's model by its label and its field by
name, as plain text: they serve every model of every app, so no foreign key can point
at them, and nothing cascades from the project's schema changes by itself.

- **Renames.** A ``RenameModel`` or ``RenameField`` would leave them under the old
  names: passages embedded and paid for again under the new one, the old ones left for
  good, failures, dismissed pairs and trained classifiers forgotten. So the stored names
  are renamed in the same step, forwards and backwards. Rows stored under the new name
  before the rename belonged to no model or field (none had that name) and give way.
- **Removals.** A field or model that goes takes its column's vectors with it (Django
  drops them); what was stored for it goes too: a removed field's passages and
  failures, everything stored for a deleted model, and the passages of a field whose
  ``passages`` are turned off. The same when migrating backwards past the field's or
  the model's creation. Nothing is restored when such a step is undone: the field comes
  back empty, and its rows and passages are embedded again. A field switch and pairs
  marked not duplicates stay when a field goes: a switch may still serve its name.

As ``django.contrib.contenttypes`` does for its content types, a ``pre_migrate``
receiver puts an operation after each such step in the plan.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, migrations, router

from semantic.fields import EmbeddingField
from semantic.models import KEYED_BY_NAME, UNREAD_WITHOUT_FIELD


class RenameStoredNames(migrations.RunPython):
    """After a ``RenameModel`` or a ``RenameField`` (``field=True``): the stored label or field name follows."""

    def __init__(self, app_label: str, model_name: str, old: str, new: str, *, field: bool) -> None:
        self.app_label, self.model_name, self.old, self.new, self.field = app_label, model_name, old, new, field
        super().__init__(self.forwards, self.backwards, elidable=True)

    def forwards(self, apps: Any, schema_editor: Any) -> None:
        self.rename(apps, schema_editor, self.old, self.new)

    def backwards(self, apps: Any, schema_editor: Any) -> None:
        self.rename(apps, schema_editor, self.new, self.old)

    def describe(self) -> str:
        kind = "field" if self.field else "model"
        return f"Renames {kind} {self.old} to {self.new} in django-semantic's stored rows"

    def rename(self, apps: Any, schema_editor: Any, old: str, new: str) -> None:
        if self.field:
            # RenameField names the model in lower case; the model is there either way.
            label = apps.get_model(self.app_label, self.model_name)._meta.label
        for cursor, name, table in _tables(schema_editor, KEYED_BY_NAME):
            if not self.field:
                _move(cursor, table, "model_label", f"{self.app_label}.{old}", f"{self.app_label}.{new}")
                continue
            # serving_field and label_field came with their tables: wherever a table is, so are they.
            for column in ["field_name", *KEYED_BY_NAME[name]]:
                _move(cursor, table, column, old, new, label=label)


class DeleteStoredRows(migrations.RunPython):
    """After a step that removes a model or field (``backwards=True``: a step that creates
    one, undone): what was stored for it goes too. A step that turns ``passages`` off
    (``passages_only=True``) takes only the field's passages."""

    def __init__(
        self, app_label: str, model_name: str, field_name: str | None = None, *, backwards: bool, passages_only=False
    ) -> None:
        self.app_label, self.model_name, self.field_name = app_label, model_name, field_name
        if passages_only:
            self.stored: tuple[str, ...] = ("Passage",)
        else:
            self.stored = UNREAD_WITHOUT_FIELD if field_name else tuple(KEYED_BY_NAME)
        noop = migrations.RunPython.noop
        super().__init__(noop if backwards else self.delete, self.delete if backwards else noop, elidable=True)

    def describe(self) -> str:
        name = f"{self.model_name}.{self.field_name}" if self.field_name else self.model_name
        return f"Deletes what django-semantic stored for {name}"

    def delete(self, apps: Any, schema_editor: Any) -> None:
        label = f"{self.app_label}.{self.model_name}"
        if self.field_name:
            try:  # RemoveField and AddField name the model in lower case
                label = apps.get_model(self.app_label, self.model_name)._meta.label
            except LookupError:
                return
        where, params = "model_label = %s", [label]
        if self.field_name:
            where, params = f"{where} AND field_name = %s", [label, self.field_name]
        for cursor, _name, table in _tables(schema_editor, self.stored):
            cursor.execute(f"DELETE FROM {cursor.db.ops.quote_name(table)} WHERE {where}", params)


def _tables(schema_editor: Any, names: Any) -> Any:
    """(cursor, name, table) for each of this app's models ``names`` whose table exists here.

    The tables as they are now, not the migration state's models: this app's migrations
    need not come before the project's in the plan.
    """
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        tables = set(connection.introspection.table_names(cursor))
        for name in names:
            stored = global_apps.get_model("semantic", name)
            table = stored._meta.db_table
            if table in tables and router.allow_migrate_model(connection.alias, stored):
                yield cursor, name, table


def _move(cursor: Any, table: str, column: str, old: str, new: str, label: str | None = None) -> None:
    """Rows whose ``column`` is ``old`` (of the model ``label``, if given) get ``new``.

    Rows already under ``new`` belonged to no model or field (none had that name until
    now): they would clash with the moved ones' unique keys, and give way.
    """
    quote = cursor.db.ops.quote_name
    where, params = f"{quote(column)} = %s", []
    if label is not None:
        where, params = f"{quote('model_label')} = %s AND {where}", [label]
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {quote(table)} WHERE {where})", [*params, old])
    if cursor.fetchone()[0]:
        cursor.execute(f"DELETE FROM {quote(table)} WHERE {where}", [*params, new])
        cursor.execute(f"UPDATE {quote(table)} SET {quote(column)} = %s WHERE {where}", [new, *params, old])


def inject_operations(
    plan: list[tuple[Any, bool]] | None = None, apps: Any = global_apps, using: str = DEFAULT_DB_ALIAS, **kwargs: Any
) -> None:
    """Put the step that keeps the stored rows in line after each rename or removal in ``plan``."""
    for migration, _backward in plan or []:
        inserts = []
        for index, operation in enumerate(migration.operations):
            following = migration.operations[index + 1 : index + 2]
            if following and isinstance(following[0], RenameStoredNames | DeleteStoredRows):
                continue  # already there: the same plan seen again
            added = following_step(migration.app_label, operation)
            if added is not None:
                inserts.append((index + 1, added))
        for inserted, (index, operation) in enumerate(inserts):
            migration.operations.insert(index + inserted, operation)


def following_step(app: str, operation: Any) -> migrations.RunPython | None:
    """What must follow ``operation`` (of a migration of ``app``) for the stored rows, if anything."""
    if isinstance(operation, migrations.RenameModel):
        old, new = operation.old_name, operation.new_name
        return RenameStoredNames(app, new, old, new, field=False)
    if isinstance(operation, migrations.RenameField):
        old, new = operation.old_name, operation.new_name
        return RenameStoredNames(app, operation.model_name, old, new, field=True)
    if isinstance(operation, migrations.DeleteModel | migrations.CreateModel):
        return DeleteStoredRows(app, operation.name, backwards=isinstance(operation, migrations.CreateModel))
    if isinstance(operation, migrations.RemoveField):
        return DeleteStoredRows(app, operation.model_name, operation.name, backwards=False)
    if isinstance(operation, migrations.AddField) and isinstance(operation.field, EmbeddingField):
        return DeleteStoredRows(app, operation.model_name, operation.name, backwards=True)
    if isinstance(operation, migrations.AlterField):
        if isinstance(operation.field, EmbeddingField) and not operation.field.passages:
            return DeleteStoredRows(app, operation.model_name, operation.name, backwards=False, passages_only=True)
    return None
