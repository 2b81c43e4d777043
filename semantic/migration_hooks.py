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

- **A replaced field removed too early.** Once a field is gone, the field declared with
  ``replaces=`` its name answers its queries. Removed before ``--switch``, while that
  field still lacks vectors, search would miss those rows: the step that removes it
  refuses (:class:`SwitchFirst`), and the migration is rolled back with the old
  vectors in place.

These are the steps. :mod:`semantic.migration_plan` puts them into each migration as it
runs, all but :class:`MoveStoredRows`, which the project's own migration names.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.core.exceptions import FieldDoesNotExist
from django.core.management.base import CommandError
from django.db import migrations, router
from django.db.migrations.operations.base import Operation

from semantic.fields import EmbeddingField
from semantic.models import KEYED_BY_NAME, UNREAD_WITHOUT_FIELD
from semantic.rows import rejected

SWITCH_FIRST = (
    "Removing {label}.{field} would make {heir} answer its queries, but queries were never switched to "
    "{heir} and {rows} rows have no current vector in it: search would miss them. Run `manage.py "
    "semantic_embed {label}.{heir} --switch` first (it fills the field, then switches), then migrate again "
    "(README: Changing the model or size)."
)
#: The same, where the code no longer says ``replaces=``: ``--switch`` would refuse, filling is the fix.
FILL_FIRST = (
    "Removing {label}.{field} would leave its queries to {heir}, but {rows} rows have no current vector in "
    "{heir}: search would miss them. Run `manage.py semantic_embed {label}.{heir}` first (the code no longer "
    "says replaces={field!r}, so there is nothing to switch: it fills the field), then migrate again."
)


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


class MoveStoredRows(Operation):
    """What the app stored for a model follows it to another app (``"notes.Note"`` to
    ``"kb.Note"``), forwards and backwards.

    Django moves a model between apps with ``SeparateDatabaseAndState``: no operation
    in it says where the model went, so no step can be put after it for you. Put this
    one in the migration that creates the model in its new app (README: Changing the
    model or size).
    """

    reversible = True

    def __init__(self, old_label: str, new_label: str) -> None:
        self.old_label, self.new_label = old_label, new_label

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        self.move(schema_editor, self.old_label, self.new_label)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        self.move(schema_editor, self.new_label, self.old_label)

    def describe(self) -> str:
        return f"Moves what django-semantic stored for {self.old_label} to {self.new_label}"

    def move(self, schema_editor: Any, old: str, new: str) -> None:
        for cursor, _name, table in _tables(schema_editor, KEYED_BY_NAME):
            _move(cursor, table, "model_label", old, new)


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


class ForgetEmbeddedHashes(migrations.RunPython):
    """After a vector column is added (forwards, or a removal undone) beside a hash column
    that stayed: the rows are pending again.

    Renaming an EmbeddingField while changing one of its options makes Django rename the
    companion columns, whose definitions did not change, but drop the vector column and
    add a new one: without this, every row's kept hash would still match its text, and
    no row would ever be embedded again.
    """

    def __init__(self, app_label: str, model_name: str, field_name: str, *, backwards: bool) -> None:
        self.app_label, self.model_name, self.field_name = app_label, model_name, field_name
        noop = migrations.RunPython.noop
        super().__init__(noop if backwards else self.forget, self.forget if backwards else noop, elidable=True)

    def describe(self) -> str:
        return f"Marks the rows of {self.model_name}.{self.field_name} as waiting for a vector"

    def forget(self, apps: Any, schema_editor: Any) -> None:
        try:
            model = apps.get_model(self.app_label, self.model_name)
            field = model._meta.get_field(self.field_name)
        except (LookupError, FieldDoesNotExist):
            return
        alias = schema_editor.connection.alias
        if not isinstance(field, EmbeddingField) or not router.allow_migrate_model(alias, model):
            return
        quote = schema_editor.connection.ops.quote_name
        column = quote(model._meta.get_field(field.embedded_hash_name).column)
        schema_editor.execute(f"UPDATE {quote(model._meta.db_table)} SET {column} = NULL WHERE {column} IS NOT NULL")


class SwitchFirst(Operation):
    """First in a migration that removes fields: refuse to remove a field whose replacement
    would serve its queries half filled (never switched to, rows without a current vector).

    The replacement is the field whose ``replaces`` names the removed one before the
    migration or after it, whatever the order of its steps: removing the field and the
    ``replaces=`` that named it in one edit, Django 5.2 writes the replacement's
    ``AlterField`` after the ``RemoveField`` and Django 6.1 before it, so the state between
    two steps tells nothing. Run first, it refuses before anything is dropped.
    """

    reversible = True
    reduces_to_sql = False  # it reads the rows

    def __init__(self, app_label: str, operations: list[Operation]) -> None:
        self.app_label, self.operations = app_label, list(operations)

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        after = from_state.clone()
        for operation in self.operations:
            operation.state_forwards(self.app_label, after)
        for operation in self.operations:
            if not isinstance(operation, migrations.RemoveField):
                continue
            key, name = (self.app_label, operation.model_name_lower), operation.name
            before = _embedding_fields(from_state, key)
            # A field the migration adds has no column yet to count rows in: not checked.
            heirs = sorted((_heirs(before, name) | _heirs(_embedding_fields(after, key), name)) & set(before))
            if name in before and heirs:
                model = from_state.apps.get_model(self.app_label, operation.model_name)
                _refuse_half_filled(schema_editor, model, name, heirs)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        pass

    def describe(self) -> str:
        return "Checks that queries of the fields removed here were switched to their replacements"


def _embedding_fields(state: Any, key: tuple[str, str]) -> dict[str, EmbeddingField]:
    model_state = state.models.get(key)
    fields = model_state.fields.items() if model_state is not None else ()
    return {name: field for name, field in fields if isinstance(field, EmbeddingField)}


def _heirs(fields: dict[str, EmbeddingField], name: str) -> set[str]:
    return {heir for heir, field in fields.items() if field.replaces == name and heir != name}


def _refuse_half_filled(schema_editor: Any, model: Any, field_name: str, heirs: list[str]) -> None:
    """Raises SWITCH_FIRST unless queries of ``field_name`` were switched to one of ``heirs``
    or each of them has a current vector for every row a run could embed."""
    alias = schema_editor.connection.alias
    if not router.allow_migrate_model(alias, model):
        return
    label = model._meta.label
    switched = set()
    for cursor, _name, table in _tables(schema_editor, ("FieldSwitch",)):
        quote = cursor.db.ops.quote_name
        cursor.execute(
            f"SELECT {quote('serving_field')} FROM {quote(table)} WHERE model_label = %s AND field_name = %s",
            [label, field_name],
        )
        switched = {name for (name,) in cursor.fetchall()}
    if switched.intersection(heirs):
        return
    failures_kept = any(True for _ in _tables(schema_editor, ("EmbeddingFailure",)))
    for heir in heirs:
        # The project's field, not the migration state's: only it knows which parts of
        # its text come from Python (the state's model has no methods), so only its
        # conditions name the columns this table has. None: the code no longer has it.
        live = _live_field(label, heir)
        if live is None:
            continue
        left = model._base_manager.using(alias).filter(live.needs_embedding())
        if failures_kept:
            left = left.exclude(rejected(model, live))  # no run can embed these (see switch_to)
        if rows := left.count():
            message = SWITCH_FIRST if live.replaces == field_name else FILL_FIRST
            raise CommandError(message.format(label=label, field=field_name, heir=heir, rows=rows))


def _live_field(label: str, name: str) -> EmbeddingField | None:
    try:
        field = global_apps.get_model(label)._meta.get_field(name)
    except (LookupError, FieldDoesNotExist):
        return None
    return field if isinstance(field, EmbeddingField) else None


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
