"""The plan of a ``migrate`` edited before it runs: the steps of :mod:`semantic.migration_hooks`
go where each migration needs them.

As ``django.contrib.contenttypes`` does for its content types, a ``pre_migrate``
receiver puts an operation after each rename or removal in the plan (and one first in a
migration that removes fields).

- **The spec column's old name.** A migration that removes ``<field>_model`` and adds
  ``<field>_spec`` (what ``makemigrations --noinput`` writes on upgrading from before
  2026-11-27) copies the values across (:mod:`semantic.spec_column`).
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS, migrations

from semantic.fields import EmbeddingField, is_pending_index_name
from semantic.migration_hooks import DeleteStoredRows, ForgetEmbeddedHashes, RenameStoredNames, SwitchFirst
from semantic.spec_column import carry_spec_values


def inject_operations(
    plan: list[tuple[Any, bool]] | None = None, apps: Any = global_apps, using: str = DEFAULT_DB_ALIAS, **kwargs: Any
) -> None:
    """Put the step that keeps the stored rows in line after each rename or removal in ``plan``,
    and the check that a replaced field may go first in each migration that removes fields."""
    for migration, _backward in plan or []:
        migration.operations[:] = fold_pending_index_renames(migration.operations)
        # A migration written with --noinput on upgrading from before 2026-11-27 (semantic.spec_column).
        migration.operations[:] = carry_spec_values(migration.operations)
        ours = RenameStoredNames | DeleteStoredRows | SwitchFirst | ForgetEmbeddedHashes
        if any(isinstance(op, ours) for op in migration.operations):
            continue  # already there: the same plan seen again
        operations = []
        for operation in migration.operations:
            operations.append(operation)
            added = following_step(migration.app_label, operation)
            if added is not None:
                operations.append(added)
        first, last = vector_columns_beside_kept_hashes(migration.app_label, migration.operations)
        if any(isinstance(op, migrations.RemoveField) for op in migration.operations):
            first.insert(0, SwitchFirst(migration.app_label, migration.operations))
        migration.operations[:] = [*first, *operations, *last]


def vector_columns_beside_kept_hashes(app: str, operations: list[Any]) -> tuple[list[Any], list[Any]]:
    """The steps that make rows pending where ``operations`` add a vector column (forwards:
    at the end, once every column exists; backwards, undoing a removal: at the start, so
    they run last) while its hash column is neither added nor removed with it."""
    hash_columns = {
        (op.model_name_lower, op.name)
        for op in operations
        if isinstance(op, migrations.AddField | migrations.RemoveField) and op.name.endswith("_embedded_hash")
    }
    first, last = [], []
    for op in operations:
        if not isinstance(op, migrations.AddField | migrations.RemoveField):
            continue
        if (op.model_name_lower, f"{op.name}_embedded_hash") in hash_columns:
            continue
        if isinstance(op, migrations.AddField) and isinstance(op.field, EmbeddingField):
            last.append(ForgetEmbeddedHashes(app, op.model_name, op.name, backwards=False))
        elif isinstance(op, migrations.RemoveField):  # its type is known only to the state, when it runs
            first.append(ForgetEmbeddedHashes(app, op.model_name, op.name, backwards=True))
    return first, last


def fold_pending_index_renames(operations: list[Any]) -> list[Any]:
    """``operations`` with each rename of a pending index a ``CreateModel`` before it made
    folded into that ``CreateModel``.

    The pending index is named after its table, so a ``RenameModel`` comes with a
    ``RenameIndex``. Squashed, the two become ``CreateModel(indexes=[old])`` and
    ``RenameIndex(old, new)``, which Django's optimizer does not fold: the model's
    indexes are created at the end of the migration, so on a new database the rename ran
    first and failed.
    """
    created: dict[str, migrations.CreateModel] = {}
    kept = []
    for operation in operations:
        if isinstance(operation, migrations.CreateModel):
            created.update((index.name, operation) for index in operation.options.get("indexes", []))
        # A RenameIndex may name the index by its fields instead (old_fields=, old_name None):
        # an index_together index had no name, as django-taggit's 0006 holds. Never ours.
        elif (
            isinstance(operation, migrations.RenameIndex)
            and operation.old_name is not None
            and is_pending_index_name(operation.old_name)
        ):
            create = created.pop(operation.old_name, None)
            if create is not None:
                create.options["indexes"] = [
                    _renamed(index, operation.new_name) if index.name == operation.old_name else index
                    for index in create.options["indexes"]
                ]
                created[operation.new_name] = create
                continue
        kept.append(operation)
    return kept


def _renamed(index: Any, name: str) -> Any:
    index = index.clone()
    index.name = name
    return index


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
