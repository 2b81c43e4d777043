"""Bulk writes that keep the hash of text from Python current.

When a field's text comes from a method or property, only Python can hash it, and
``<field>_source_hash`` is what tells the worker the row changed. ``save()`` and a
plain ``bulk_create()`` compute it in the field's ``pre_save()``; ``bulk_update()``
calls no ``pre_save()``, and an upsert (``bulk_create(..., update_conflicts=True)``)
sets on conflict only the columns in ``update_fields``. Through the app's QuerySet
both write the hash too. A manager built on another QuerySet cannot be reached from
here, so its ``bulk_update()`` leaves the old hash (README, "The field").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import models

from semantic.hooks import saved_text
from semantic.registry import embedding_fields

if TYPE_CHECKING:
    _QuerySetBase = models.QuerySet
else:
    _QuerySetBase = object


def with_source_hashes(model: type[models.Model], objs: Sequence[models.Model], fields: Iterable[str]) -> list[str]:
    """``fields`` and the ``<field>_source_hash`` columns the write must set too, each
    computed here on every object."""
    names = list(fields)
    for field in embedding_fields(model):
        if field.python_parts and field.source_hash_name not in names and saved_text(field, frozenset(names)):
            for obj in objs:
                setattr(obj, field.source_hash_name, field.text_hash(obj))
            names.append(field.source_hash_name)
    return names


class BulkWritesMixin(_QuerySetBase):
    """``bulk_update()`` and upserts that also write the hash of text from Python."""

    # Typed as django-stubs types QuerySet's (a project's QuerySet with the mixin must agree with both).
    def bulk_update(self, objs: Iterable[Any], fields: Iterable[str], batch_size: int | None = None) -> int:
        rows = tuple(objs)
        return super().bulk_update(rows, with_source_hashes(self.model, rows, fields), batch_size=batch_size)

    def bulk_create(
        self,
        objs: Iterable[Any],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Collection[str] | None = None,
        unique_fields: Collection[str] | None = None,
    ) -> list[Any]:
        rows = tuple(objs)
        if update_conflicts and update_fields:
            update_fields = with_source_hashes(self.model, rows, update_fields)
        return super().bulk_create(
            rows,
            batch_size=batch_size,
            ignore_conflicts=ignore_conflicts,
            update_conflicts=update_conflicts,
            update_fields=update_fields,
            unique_fields=unique_fields,
        )
