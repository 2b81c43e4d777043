"""The text an EmbeddingField embeds: read from a row in Python, and computed in SQL.

A field's text is its ``source`` parts joined by blank lines, with its ``title_source``
after a unit separator when it has one. Parts that are columns of the model's own table
can be read by PostgreSQL, which hashes them to find pending rows; methods, properties
and a multi-table parent's fields are read in Python (:func:`is_python_part`), and the
row carries their hash in ``<name>_source_hash`` instead.
"""

from __future__ import annotations

import inspect
from typing import Any

from django.db import models
from django.db.models import F, Value
from django.db.models.functions import MD5, Cast, Concat, NullIf
from django.db.models.query_utils import DeferredAttribute

from semantic.text import source_hash

SOURCE_SEPARATOR = "\n\n"
TITLE_SEPARATOR = "\x1f"
#: ``<name>_source_hash`` of a row whose Python-computed text is empty: hashed, unlike NULL.
EMPTY_TEXT_HASH = ""


class FieldTextMixin:
    """What :class:`semantic.fields.EmbeddingField` knows of its text."""

    name: str
    source: tuple[str, ...]
    title_source: str | None
    #: Names in ``source``/``title_source`` whose text SQL cannot read from the field's own
    #: table: methods, properties, and a multi-table parent's fields (set per model).
    python_parts: tuple[str, ...] = ()
    #: The model whose field this is a copy of, in a model built from that one's fields
    #: (a history model); None for a field of the model it was declared on.
    copied_from: type[models.Model] | None = None

    @property
    def source_hash_name(self) -> str:
        return f"{self.name}_source_hash"

    def text_parts(self) -> tuple[str, ...]:
        return (*self.source, self.title_source) if self.title_source else self.source

    def text_from_python(self) -> bool:
        """True when some part of the text is a method or property, which SQL cannot compute."""
        return bool(self.python_parts)

    def source_text(self, instance: models.Model) -> str:
        """The text to embed for ``instance``, uncleaned: as stored, when it was read with
        :meth:`with_stored_text`, else as its attributes give it."""
        stored = instance.__dict__.get(self.stored_text_name)
        if stored is not None:
            return stored
        return SOURCE_SEPARATOR.join(read_part(instance, name) for name in self.source)

    def title_text(self, instance: models.Model) -> str | None:
        if not self.title_source:
            return None
        if self.stored_title_name in instance.__dict__:
            return instance.__dict__[self.stored_title_name] or ""
        return read_part(instance, self.title_source)

    def with_stored_text(self, rows: models.QuerySet) -> models.QuerySet:
        """``rows`` read with their text (and title) as PostgreSQL holds it, for the worker.

        Which rows are pending, and whether a vector may be written, is decided on the
        text SQL hashes from the columns; the worker must embed that very text, not what
        an attribute returns (a translated field's descriptor, such as
        django-modeltranslation's, returns the active language's). Text from Python is
        read through Python, as it is hashed.
        """
        if self.text_from_python():
            return rows
        stored = {self.stored_text_name: self.stored_source_text()}
        if self.title_source:
            stored[self.stored_title_name] = Cast(F(self.title_source), models.TextField())
        return rows.annotate(**stored)

    @property
    def stored_text_name(self) -> str:
        return f"_semantic_{self.name}_text"

    @property
    def stored_title_name(self) -> str:
        return f"_semantic_{self.name}_title"

    def text_hash(self, instance: models.Model) -> str | None:
        """MD5 of the text (and title) of ``instance`` as it is in memory; for no text, None
        (:data:`EMPTY_TEXT_HASH` when the text comes from Python).

        For text from fields it equals what :meth:`stored_text_hash` computes in SQL.
        """
        text = self.source_text(instance)
        if self.title_source:
            text += TITLE_SEPARATOR + (self.title_text(instance) or "")
        digest = source_hash(text)
        if digest is None and self.text_from_python():
            return EMPTY_TEXT_HASH
        return digest

    def stored_text_hash(self, ref: type[F] = F) -> Any:
        """SQL for the hash of the row's text as stored (``ref=OuterRef`` in subqueries)."""
        if self.text_from_python():
            return ref(self.source_hash_name)

        joined = Concat(
            *self._stored_parts(ref, title=True), Value("", models.TextField()), output_field=models.TextField()
        )
        return MD5(NullIf(joined, Value("", models.TextField())))

    def stored_source_text(self, ref: type[F] = F) -> Any:
        """SQL for the row's text as stored (what :meth:`source_text` reads); None when it comes from Python."""
        if self.text_from_python():
            return None
        return Concat(
            *self._stored_parts(ref, title=False), Value("", models.TextField()), output_field=models.TextField()
        )

    def _stored_parts(self, ref: type[F], *, title: bool) -> list[Any]:
        def text(value: Any) -> Any:
            return Cast(ref(value), models.TextField()) if value else Value(value, models.TextField())

        parts: list[Any] = []
        for field_name in self.source:
            if parts:
                parts.append(Value(SOURCE_SEPARATOR, models.TextField()))
            parts.append(text(field_name))
        if title and self.title_source:
            parts += [Value(TITLE_SEPARATOR, models.TextField()), text(self.title_source)]
        return parts


def read_part(instance: models.Model, name: str) -> str:
    """A text part: a field's value, or what a method or property returns ("" for None)."""
    value = getattr(instance, name)
    if callable(value):
        value = value()
    return "" if value is None else str(value)


def is_python_part(cls: type, name: str) -> bool:
    """True when ``name`` is not a column of ``cls``'s own table: a method, a property, or
    a field of a multi-table parent.

    A parent's column lives in the parent's table, which the pending index (a partial
    index of the child's table) cannot read; read through the child instance, whose
    attributes hold the parent's values too, it is text from Python like a property's.

    Looked up statically: while the class is being built, fields declared further
    down do not exist yet, but methods, properties and the parents' fields already do.
    An abstract base's field becomes a column of ``cls`` itself.
    """
    attr = inspect.getattr_static(cls, name, None)
    if isinstance(attr, DeferredAttribute):
        owner = attr.field.model
        return owner is not cls and not owner._meta.abstract
    return attr is not None
