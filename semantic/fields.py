"""``EmbeddingField``: a pgvector column kept in step with a row's text.

Beside the vector, the field adds three hidden columns to the model (named after
the field, e.g. ``embedding_source_hash``):

``<name>_source_hash``
    MD5 of the text to embed. When the text comes from model fields this is a
    ``GeneratedField`` computed by PostgreSQL, so it is right after ``save()``,
    ``bulk_create()``, ``QuerySet.update()`` and raw SQL alike. When the text comes
    from a model method, Python computes it on ``save()`` and ``bulk_create()``.
``<name>_embedded_hash``
    MD5 of the text the stored vector was made from.
``<name>_model``
    Which backend model, task type and size made the stored vector.

A row needs embedding exactly when the two hashes differ, or when its vector was
made by another model, task type or size than the current settings ask for. That
test is plain SQL (:meth:`EmbeddingField.needs_embedding`), so no row's text is
read back to find the work. The worker writes those three columns; ``save()``
never overwrites them, so saving an instance loaded before its vector arrived does
not discard the vector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import models
from django.db.models import F, Func, Q, Value
from django.db.models.functions import MD5, Cast, Concat, NullIf
from django.db.models.signals import post_save
from pgvector.django import HalfVectorField, VectorField

from semantic.backends.base import TASK_TYPES
from semantic.text import source_hash

#: pgvector cannot build an HNSW index on ``vector`` columns above this size.
MAX_VECTOR_INDEX_DIMENSIONS = 2000
SOURCE_SEPARATOR = "\n\n"
TITLE_SEPARATOR = "\x1f"
HASH_LENGTH = 32


class IsDistinctFrom(Func):
    """``a IS DISTINCT FROM b``: inequality where NULL equals NULL."""

    template = "(%(expressions)s)"
    arg_joiner = " IS DISTINCT FROM "
    output_field = models.BooleanField()


class WorkerOwnedMixin:
    """Columns written only by the embedding worker.

    On an UPDATE from ``Model.save()`` the column is set to itself, so an instance
    loaded before its vector was written cannot erase the vector by being saved.
    """

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        if add:
            return super().pre_save(model_instance, add)  # type: ignore[misc]
        return F(self.attname)  # type: ignore[attr-defined]


class EmbeddedHashField(WorkerOwnedMixin, models.CharField):
    pass


class EmbeddingModelField(WorkerOwnedMixin, models.CharField):
    pass


class EmbeddingField(WorkerOwnedMixin, VectorField):
    """A vector embedding of the row's text, computed outside the request.

    ``source`` names a text field, a tuple of text fields (joined by blank lines),
    or a model method that returns the text. ``task_type`` is a Gemini task type.
    ``title_source`` (a field or method) supplies the document title sent with
    ``RETRIEVAL_DOCUMENT``. ``dimensions`` defaults to ``SEMANTIC["DIMENSIONS"]``, or
    the backend's default size. Vectors over 2,000 dimensions are stored as
    ``halfvec`` (the largest ``vector`` pgvector can index with HNSW); pass
    ``halfvec=True`` to store smaller ones at half precision too.
    """

    description = "Embedding of the row's text"
    source_is_method = False

    def __init__(
        self,
        verbose_name: str | None = None,
        *,
        source: str | tuple[str, ...] | list[str],
        task_type: str = "SEMANTIC_SIMILARITY",
        title_source: str | None = None,
        dimensions: int | None = None,
        halfvec: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(
                f"EmbeddingField task_type {task_type!r} is not a Gemini task type; "
                f"use one of {', '.join(TASK_TYPES)}."
            )
        if isinstance(source, str):
            source = (source,)
        if not source or not all(isinstance(name, str) and name for name in source):
            raise ValueError("EmbeddingField source must be a field name, a tuple of field names, or a method name.")
        self.source = tuple(source)
        self.task_type = task_type
        self.title_source = title_source
        if dimensions is None:
            dimensions = default_dimensions()
        if not isinstance(dimensions, int) or dimensions < 1:
            raise ValueError(f"EmbeddingField dimensions must be a positive integer, not {dimensions!r}.")
        self._halfvec_arg = halfvec
        self.halfvec = halfvec if halfvec is not None else dimensions > MAX_VECTOR_INDEX_DIMENSIONS
        kwargs.update(null=True, blank=True, editable=False)
        super().__init__(verbose_name, dimensions=dimensions, **kwargs)

    # -- schema ------------------------------------------------------------------

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, path, args, kwargs = super().deconstruct()
        for key in ("null", "blank", "editable"):
            kwargs.pop(key, None)
        kwargs["source"] = self.source[0] if len(self.source) == 1 else self.source
        if self.task_type != "SEMANTIC_SIMILARITY":
            kwargs["task_type"] = self.task_type
        if self.title_source:
            kwargs["title_source"] = self.title_source
        if self._halfvec_arg is not None:
            kwargs["halfvec"] = self._halfvec_arg
        return name, "semantic.fields.EmbeddingField", args, kwargs

    def db_type(self, connection: Any) -> str:
        return f"{'halfvec' if self.halfvec else 'vector'}({self.dimensions})"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if self.halfvec:
            return HalfVectorField.from_db_value(self, value, expression, connection)  # type: ignore[arg-type]
        return super().from_db_value(value, expression, connection)

    def to_python(self, value: Any) -> Any:
        if self.halfvec:
            return HalfVectorField.to_python(self, value)  # type: ignore[arg-type]
        return super().to_python(value)

    def get_prep_value(self, value: Any) -> Any:
        if self.halfvec:
            return HalfVectorField.get_prep_value(self, value)  # type: ignore[arg-type]
        return super().get_prep_value(value)

    def contribute_to_class(self, cls: type[models.Model], name: str, private_only: bool = False) -> None:
        super().contribute_to_class(cls, name, private_only=private_only)
        # Historical models built by migrations carry the companion columns
        # themselves; abstract models pass the field on to their subclasses.
        if cls._meta.abstract or cls.__module__ == "__fake__":
            return
        self.source_is_method = any(_is_method(cls, n) for n in (*self.source, self.title_source) if n)
        existing = {f.name for f in cls._meta.local_fields}
        if self.source_hash_name not in existing:
            cls.add_to_class(self.source_hash_name, self._make_source_hash_field())
        if self.embedded_hash_name not in existing:
            cls.add_to_class(
                self.embedded_hash_name,
                EmbeddedHashField(max_length=HASH_LENGTH, null=True, blank=True, editable=False),
            )
        if self.model_name not in existing:
            cls.add_to_class(
                self.model_name,
                EmbeddingModelField(max_length=200, null=True, blank=True, editable=False),
            )
        post_save.connect(self._post_save, sender=cls, weak=False, dispatch_uid=f"semantic:{cls._meta.label}:{name}")

    def _make_source_hash_field(self) -> models.Field:
        if self.source_is_method:
            return models.CharField(max_length=HASH_LENGTH, null=True, blank=True, editable=False)
        def text(value: Any) -> Any:
            return Cast(value, models.TextField()) if isinstance(value, F) else Value(value, models.TextField())

        parts: list[Any] = []
        for field_name in self.source:
            if parts:
                parts.append(text(SOURCE_SEPARATOR))
            parts.append(text(F(field_name)))
        if self.title_source:
            parts += [text(TITLE_SEPARATOR), text(F(self.title_source))]
        joined = Concat(*parts, text(""), output_field=models.TextField())
        return models.GeneratedField(
            expression=MD5(NullIf(joined, text(""))),
            output_field=models.CharField(max_length=HASH_LENGTH, null=True),
            db_persist=True,
        )

    @property
    def source_hash_name(self) -> str:
        return f"{self.name}_source_hash"

    @property
    def embedded_hash_name(self) -> str:
        return f"{self.name}_embedded_hash"

    @property
    def model_name(self) -> str:
        return f"{self.name}_model"

    # -- the text ----------------------------------------------------------------

    def source_text(self, instance: models.Model) -> str:
        """The text to embed for ``instance``, uncleaned."""
        if len(self.source) == 1 and _is_method(type(instance), self.source[0]):
            value = getattr(instance, self.source[0])()
            return "" if value is None else str(value)
        return SOURCE_SEPARATOR.join(str(getattr(instance, name) or "") for name in self.source)

    def title_text(self, instance: models.Model) -> str | None:
        if not self.title_source:
            return None
        value = getattr(instance, self.title_source)
        if callable(value):
            value = value()
        return "" if value is None else str(value)

    def text_hash(self, instance: models.Model) -> str | None:
        """What ``<name>_source_hash`` holds for ``instance`` as it is in memory."""
        text = self.source_text(instance)
        if self.title_source:
            text += TITLE_SEPARATOR + (self.title_text(instance) or "")
        return source_hash(text)

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        if self.source_is_method:
            setattr(model_instance, self.source_hash_name, self.text_hash(model_instance))
        return super().pre_save(model_instance, add)

    # -- what needs doing ----------------------------------------------------------

    def spec(self) -> str:
        """Identifies vectors made under the current settings: model, task type, size."""
        from semantic.backends import get_backend

        return f"{get_backend().model_id}|{self.task_type}|{self.dimensions}"

    def needs_embedding(self) -> Q:
        """Rows whose vector is missing, out of date, or made by another model."""
        changed = IsDistinctFrom(F(self.embedded_hash_name), F(self.source_hash_name))
        stale = Q(**{f"{self.attname}__isnull": False}) & Q(IsDistinctFrom(F(self.model_name), Value(self.spec())))
        return Q(changed) | stale

    def searchable(self) -> Q:
        """Rows whose stored vector may be compared with vectors made now.

        Queries use this and nothing else to pick rows, so a vector made by another
        model, task type or size is never compared with the query's.
        """
        return Q(**{f"{self.attname}__isnull": False, self.model_name: self.spec()})

    def is_current(self) -> Q:
        """Rows whose vector matches their text and the current settings."""
        return Q(
            **{
                f"{self.name}__isnull": False,
                self.embedded_hash_name: F(self.source_hash_name),
                self.model_name: self.spec(),
            }
        )

    def _post_save(self, sender: type[models.Model], instance: models.Model, raw: bool = False, **kwargs: Any) -> None:
        from semantic import tasks

        if raw or tasks.embedding_suspended():
            return
        current = self.text_hash(instance)
        if self.source_is_method and kwargs.get("update_fields") is not None:
            sender._base_manager.filter(pk=instance.pk).update(**{self.source_hash_name: current})
        if current == getattr(instance, self.embedded_hash_name) and (
            getattr(instance, self.attname) is None or getattr(instance, self.model_name) == self.spec()
        ):
            return
        tasks.enqueue(sender, self.name, [instance.pk], using=kwargs.get("using"))


def default_dimensions() -> int:
    from semantic.conf import semantic_settings as conf

    return conf.DIMENSIONS or conf.BACKEND.default_dimensions


def embedding_fields(model: type[models.Model]) -> list[EmbeddingField]:
    return [f for f in model._meta.get_fields() if isinstance(f, EmbeddingField)]


def get_embedding_field(model: type[models.Model], name: str | None = None) -> EmbeddingField:
    """The model's EmbeddingField called ``name``, or its only one when ``name`` is None."""
    fields = embedding_fields(model)
    label = model._meta.label
    if not fields:
        raise ValueError(f"{label} has no EmbeddingField.")
    if name is None:
        if len(fields) > 1:
            names = ", ".join(f.name for f in fields)
            raise ValueError(f"{label} has several EmbeddingFields ({names}); pass field=<name>.")
        return fields[0]
    for field in fields:
        if field.name == name:
            return field
    names = ", ".join(f.name for f in fields)
    raise ValueError(f"{label} has no EmbeddingField named {name!r}; it has {names}.")


def _is_method(cls: type, name: str) -> bool:
    attr: Callable[..., Any] | None = getattr(cls, name, None)
    return callable(attr) and not isinstance(attr, type)
