"""The hidden columns an EmbeddingField adds beside its vector (see :mod:`semantic.fields`).

Each deconstructs to Django's own field class, so migrations see plain columns and this
module's classes can change without touching them.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import Case, F, Value, When
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from semantic.expressions import IsDistinctFrom
from semantic.field_text import FieldTextMixin

HASH_LENGTH = 32


class WorkerOwnedMixin:
    """Columns written only by the embedding worker.

    On an UPDATE from ``Model.save()`` the column is set to itself, so an instance
    loaded before its vector was written cannot erase the vector by being saved.
    """

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        if add:
            return super().pre_save(model_instance, add)  # type: ignore[misc]
        return F(self.attname)  # type: ignore[attr-defined]


class NullTextMixin:
    """A NULL written as text by ``value_to_string()`` reads back as NULL in ``to_python()``.

    django-modelcluster, and so every Wagtail revision, stores ``value_to_string()`` of a
    field whose ``pre_save()`` returns an expression, as these columns' do (``F(column)``,
    ``Case()``), and reads it back with ``to_python()``. Django and pgvector write a NULL
    there as ``null_text``, which their ``to_python()`` refuses ("" is no time, no vector)
    or keeps as text ("None"): loading the revision, and with it Publish and the edit page,
    would fail. No value of the column is ever its ``null_text``. Django's serializers
    (``dumpdata``) write None for a NULL without asking the field, and are unchanged.
    """

    #: ``str(None)``: what Django's ``Field.value_to_string()`` writes for a NULL.
    null_text = "None"

    def is_null_text(self, value: Any) -> bool:
        return isinstance(value, str) and value == self.null_text

    def to_python(self, value: Any) -> Any:
        if self.is_null_text(value):
            return None
        return super().to_python(value)  # type: ignore[misc]


class CompanionMixin:
    """A hidden column the EmbeddingField adds; migrations see a plain Django field.

    Deconstructing to Django's own class keeps this app's class names out of users'
    migration files, so the behaviour below can change without touching them.
    """

    plain_path = ""

    def __init__(self, *args: Any, embedding_field: str = "", **kwargs: Any) -> None:
        #: The name of the EmbeddingField this column serves, for those whose pre_save reads it.
        self.embedding_field = embedding_field
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, _, args, kwargs = super().deconstruct()  # type: ignore[misc]
        kwargs.pop("embedding_field", None)
        return name, self.plain_path, args, kwargs


class EmbeddedHashField(CompanionMixin, NullTextMixin, WorkerOwnedMixin, models.CharField):
    plain_path = "django.db.models.CharField"


class EmbeddingSpecField(CompanionMixin, NullTextMixin, WorkerOwnedMixin, models.CharField):
    plain_path = "django.db.models.CharField"


class SourceHashField(CompanionMixin, NullTextMixin, models.CharField):
    """MD5 of a Python-computed text, set by ``save()`` and ``bulk_create()``."""

    plain_path = "django.db.models.CharField"

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        field = live_field(model_instance, self.embedding_field)
        if field is None:
            return super().pre_save(model_instance, add)
        value = field.text_hash(model_instance)
        setattr(model_instance, self.attname, value)
        return value


class PendingSinceField(CompanionMixin, NullTextMixin, models.DateTimeField):
    """When the row began waiting for an embedding of its current text.

    On INSERT, now (for a row with text), also set on the instance as ``auto_now`` does,
    so what reads the saved instance (an API's answer to a POST) sees the row's value.
    On UPDATE, now if the saved text differs from the text in the database and the row
    was not already waiting; otherwise unchanged. ``SET`` reads the old row, so no extra
    query is made, and for the same reason the instance keeps the value it was loaded
    with: the result depends on the row as the UPDATE finds it (the worker may have
    embedded it, or another save started its wait, since the instance was loaded), which
    only a query could tell.
    """

    plain_path = "django.db.models.DateTimeField"
    null_text = ""  # DateTimeField.value_to_string() of a NULL

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        field = live_field(model_instance, self.embedding_field)
        if field is None:
            return super().pre_save(model_instance, add)
        current = field.text_hash(model_instance)
        if add:
            value = timezone.now() if current else None
            setattr(model_instance, self.attname, value)
            return value
        changed = IsDistinctFrom(field.stored_text_hash(), Value(current, models.CharField()))
        return Case(When(changed, then=Coalesce(F(self.attname), Now())), default=F(self.attname))


def live_field(model_instance: models.Model, name: str) -> FieldTextMixin | None:
    """The instance's EmbeddingField ``name``, or None in a model that keeps only copies
    of another model's columns (where the companions are plain columns too)."""
    try:
        field = model_instance._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    return field if isinstance(field, FieldTextMixin) and field.copied_from is None else None


def forget_source_hash(field: FieldTextMixin, model_instance: models.Model) -> bool:
    """Empty the hash of text from Python in a row saved through a migration's historical
    model (``apps.get_model()`` in ``RunPython``).

    That model has no methods or properties, so the text cannot be hashed, and its
    ``<name>_source_hash`` is a plain column that would write back the hash loaded with
    the row whatever the migration changed. Without one the row is pending: the worker
    hashes it and embeds it only if its text changed. The column follows the field in
    the model (the field added it), so it is read after this runs. Returns whether the
    row has such a hash.
    """
    try:
        companion = model_instance._meta.get_field(field.source_hash_name)
    except FieldDoesNotExist:
        return False  # text from fields at this point of the migrations: hashed in SQL
    setattr(model_instance, companion.attname, None)
    return True
