"""Renamed models and fields keep what this app stores about their rows.

The app's own tables (passages, embedding failures, pairs marked not duplicates, field
switches, Batch API jobs, classifiers) name a row's model by its label and its field by
name, as plain text: they serve every model of every app, so no foreign key can point
at them. A ``RenameModel`` or ``RenameField`` in a project's migrations changes neither
by itself, so the passages would be embedded and paid for again under the new name,
the old ones left behind for good, and failures, dismissed pairs and trained
classifiers forgotten.

So, as ``django.contrib.contenttypes`` does for its content types, a ``pre_migrate``
receiver puts an operation after every rename in the plan that renames them too,
forwards and backwards. Rows stored under the new name before the rename belonged to
no model or field (none had that name) and give way to the renamed ones.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, migrations, router

#: The app's models that name a row's model and field, with their other columns naming a field of that model.
KEYED_MODELS = {
    "EmbeddingFailure": (),
    "DismissedPair": (),
    "FieldSwitch": ("serving_field",),
    "EmbeddingBatchJob": (),
    "Classifier": ("label_field",),
    "Passage": (),
}


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
        connection = schema_editor.connection
        if self.field:
            # RenameField names the model in lower case; the model is there either way.
            label = apps.get_model(self.app_label, self.model_name)._meta.label
        with connection.cursor() as cursor:
            tables = set(connection.introspection.table_names(cursor))
            for name, field_columns in KEYED_MODELS.items():
                # The table as it is now, not the migration state's model: this app's
                # migrations need not come before the project's in the plan.
                stored = global_apps.get_model("semantic", name)
                table = stored._meta.db_table
                if table not in tables or not router.allow_migrate_model(connection.alias, stored):
                    continue
                if not self.field:
                    _move(cursor, table, "model_label", f"{self.app_label}.{old}", f"{self.app_label}.{new}")
                    continue
                present = {c.name for c in connection.introspection.get_table_description(cursor, table)}
                for column in ["field_name", *(c for c in field_columns if c in present)]:
                    _move(cursor, table, column, old, new, label=label)


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


def inject_rename_operations(
    plan: list[tuple[Any, bool]] | None = None, apps: Any = global_apps, using: str = DEFAULT_DB_ALIAS, **kwargs: Any
) -> None:
    """Put a :class:`RenameStoredNames` after every ``RenameModel`` and ``RenameField`` in ``plan``."""
    for migration, _backward in plan or []:
        inserts = []
        for index, operation in enumerate(migration.operations):
            following = migration.operations[index + 1 : index + 2]
            if following and isinstance(following[0], RenameStoredNames):
                continue  # already there: the same plan seen again
            app = migration.app_label
            if isinstance(operation, migrations.RenameModel):
                old, new = operation.old_name, operation.new_name
                rename = RenameStoredNames(app, operation.new_name, old, new, field=False)
            elif isinstance(operation, migrations.RenameField):
                old, new = operation.old_name, operation.new_name
                rename = RenameStoredNames(app, operation.model_name, old, new, field=True)
            else:
                continue
            inserts.append((index + 1, rename))
        for inserted, (index, operation) in enumerate(inserts):
            migration.operations.insert(index + inserted, operation)
