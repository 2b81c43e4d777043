"""``EmbeddingField``: a pgvector column kept in step with a row's text.

What the field puts into a table, and so into users' migrations, is kept small and
independent of everything that may change later (``source``, ``title_source``,
``task_type``, ``dimensions``, ``embedding_model``, the backend, the environment).
Beside the vector it adds plain nullable columns, so adding the field to a big table
rewrites nothing, and changing its options alters no column (but see the vector's
type below):

``<name>_embedded_hash``
    MD5 of the text the stored vector was made from (written by the worker).
``<name>_spec``
    Which backend model, task type and size made the stored vector (indexed).
``<name>_pending_since``
    When the row's text last changed while its vector was current: how long the row
    has waited. Set by ``save()`` and ``bulk_create()``, cleared with the vector.
``<name>_source_hash``
    Only when the text comes from Python (a method or property in ``source`` or
    ``title_source``): MD5 of that text, computed on ``save()`` and ``bulk_create()``.

The vector column itself is ``vector`` (or ``halfvec``) without a size: a size change
is then no ``ALTER COLUMN ... TYPE`` that old vectors could never be cast through, unless
it crosses 2,000 dimensions, where the storage, and so the column's type, changes
(``vector`` casts to ``halfvec`` and back at any size; the old vectors stay, stale). The
size lives in the field and in :class:`semantic.indexes.EmbeddingIndex`, which indexes
``embedding::vector(<size>)`` over the rows of that size, as pgvector's documentation
advises for columns that hold several sizes.

Which rows need embedding is plain SQL. When the text comes from model fields, a row
is pending when ``md5(<its text>)`` differs from ``<name>_embedded_hash``: PostgreSQL
computes it from the columns themselves, so rows written by ``bulk_create()``,
``QuerySet.update()`` or raw SQL are found too, through a partial index on that very
condition (:meth:`EmbeddingField.pending_index`). Changing ``source`` changes only that
index, which ``makemigrations`` drops and recreates by itself.

When the text comes from Python (a method or property, or a field of a multi-table
parent, whose column is in a table the partial index cannot read), PostgreSQL cannot
compute it: the row is pending when ``<name>_source_hash`` differs from
``<name>_embedded_hash``, or is NULL: not computed yet, as in every row that existed
before the field (``AddField`` leaves the column NULL). The worker computes it while
it embeds the row. An empty text is hashed as ``""`` (:data:`EMPTY_TEXT_HASH`), so
that a row known to be empty is not taken for one never hashed. ``save()`` and
``bulk_create()`` keep the hash current, and so do ``bulk_update()`` and upserts
through the app's QuerySet (:mod:`semantic.bulk`); a raw save (``loaddata``) and a
save through a migration's historical model leave it NULL. ``QuerySet.update()`` and
raw SQL do not (nor a save of a parent row alone), so such rows are found only by
their next ``save()`` or by ``semantic_embed --all``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Cast
from django.db.models.lookups import Exact, IsNull
from pgvector.django import HalfVectorField, VectorField

from semantic.backends.base import TASK_TYPES
from semantic.companions import (
    HASH_LENGTH,
    EmbeddedHashField,
    EmbeddingSpecField,
    NullTextMixin,
    PendingSinceField,
    SourceHashField,
    WorkerOwnedMixin,
    forget_source_hash,
)
from semantic.expressions import IsDistinctFrom, VectorDims
from semantic.field_text import FieldTextMixin, is_python_part
from semantic.passages import Passages

__all__ = [
    "DEFAULT_DIMENSIONS",
    "EmbeddingField",
    "is_pending_index_name",
    # Named in migrations written by earlier versions: importable here for good.
    "EmbeddedHashField",
    "EmbeddingModelField",
    "IsDistinctFrom",
    "PendingSinceField",
]

#: Size of a field that does not set ``dimensions``: what the local model makes, and
#: a size Gemini can make too, so the same field works with either backend.
DEFAULT_DIMENSIONS = 384
#: pgvector cannot build an HNSW index on ``vector`` values above this size.
MAX_VECTOR_INDEX_DIMENSIONS = 2000

#: The spec column's class before it was renamed; old migrations name it.
EmbeddingModelField = EmbeddingSpecField


#: The pending index's name: a digest of the table and the field, so it changes with a rename.
PENDING_INDEX_NAME = "semantic_{digest}_pending"


def is_pending_index_name(name: str) -> bool:
    return re.fullmatch(PENDING_INDEX_NAME.format(digest="[0-9a-f]{10}"), name) is not None


class EmbeddingField(FieldTextMixin, NullTextMixin, WorkerOwnedMixin, VectorField):
    """A vector embedding of the row's text, computed outside the request.

    ``source`` names a text field, a tuple of them (joined by blank lines), or methods
    or properties returning text. ``task_type`` is a Gemini task type. ``title_source``
    (a field, method or property) supplies the document title sent with
    ``RETRIEVAL_DOCUMENT``. ``dimensions`` defaults to :data:`DEFAULT_DIMENSIONS` (384),
    whatever the backend or environment, so migrations are the same everywhere.
    Vectors over 2,000 dimensions are stored as ``halfvec`` (the largest ``vector``
    pgvector can index with HNSW); pass ``halfvec=True`` for smaller ones too.

    ``embedding_model`` pins this field to a model of the backend (default:
    ``SEMANTIC["MODEL"]``). ``replaces`` names another EmbeddingField of the model that
    this one is to take over from (see :mod:`semantic.switch`).

    ``passages=True`` (or ``Passages(max_chars=..., overlap=...)``) also embeds the
    text in passages the model reads whole, so a long text is found by any of its
    paragraphs (``similar_to(..., passages=True)``, ``semantic.context()``). The
    passages live in the app's own table (``semantic.Passage``), not in this one: the
    option adds nothing to the model's migrations but its value.
    """

    description = "Embedding of the row's text"
    null_text = ""  # pgvector's value_to_string() of a NULL
    #: Options that change what is embedded, not the table: altering them runs no SQL.
    #: ``dimensions`` is not one: across 2,000 it changes the storage, and so the column's
    #: type. The column carries no size, so a size change that keeps the type gives the
    #: schema editor nothing to alter and still runs no SQL.
    non_db_attrs = (
        *VectorField.non_db_attrs,
        "source",
        "task_type",
        "title_source",
        "embedding_model",
        "replaces",
        "passages",
    )

    #: ``db_index=True`` would build a btree index on the vector column.
    NO_DB_INDEX = (
        "EmbeddingField does not take db_index=True: it would build a btree index on the vectors, which no "
        "similarity search uses and which refuses, when they are saved, vectors over its 2,704-byte row limit. "
        "Remove db_index= and add "
        'semantic.indexes.EmbeddingIndex(fields=["<field>"], name="...") to the model\'s Meta.indexes.'
    )

    def __init__(
        self,
        verbose_name: str | None = None,
        *,
        source: str | tuple[str, ...] | list[str],
        task_type: str = "SEMANTIC_SIMILARITY",
        title_source: str | None = None,
        dimensions: int | None = None,
        halfvec: bool | None = None,
        embedding_model: str | None = None,
        replaces: str | None = None,
        passages: bool | Passages | dict[str, int] = False,
        **kwargs: Any,
    ) -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(
                f"EmbeddingField task_type {task_type!r} is not a Gemini task type; use one of {', '.join(TASK_TYPES)}."
            )
        if isinstance(source, str):
            source = (source,)
        if not source or not all(isinstance(name, str) and name for name in source):
            raise ValueError("EmbeddingField source must be a field name, a tuple of field names, or a method name.")
        for option in ("null", "blank", "editable"):
            if option in kwargs and kwargs[option] != (option != "editable"):
                raise TypeError(
                    f"EmbeddingField sets {option}={option != 'editable'} itself: the worker fills it after "
                    f"save(), so it is empty until then and never edited in forms. Remove {option}= from the field."
                )
        if kwargs.get("db_index"):
            raise TypeError(self.NO_DB_INDEX)
        self.source = tuple(source)
        self.task_type = task_type
        self.embedding_model = embedding_model
        self.replaces = replaces
        self.passages = Passages.from_option(passages)
        self.title_source = title_source
        self._dimensions_arg = dimensions
        if dimensions is None:
            dimensions = DEFAULT_DIMENSIONS
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise ValueError(f"EmbeddingField dimensions must be a positive integer, not {dimensions!r}.")
        self._halfvec_arg = halfvec
        self.halfvec = halfvec if halfvec is not None else dimensions > MAX_VECTOR_INDEX_DIMENSIONS
        kwargs.update(null=True, blank=True, editable=False)
        super().__init__(verbose_name, dimensions=dimensions, **kwargs)

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        if type(model_instance).__module__ == "__fake__":
            forget_source_hash(self, model_instance)
        return super().pre_save(model_instance, add)

    # -- schema ------------------------------------------------------------------

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, path, args, kwargs = super().deconstruct()
        for key in ("null", "blank", "editable", "dimensions"):
            kwargs.pop(key, None)
        kwargs["source"] = self.source[0] if len(self.source) == 1 else self.source
        if self.task_type != "SEMANTIC_SIMILARITY":
            kwargs["task_type"] = self.task_type
        if self.title_source:
            kwargs["title_source"] = self.title_source
        if self._dimensions_arg is not None:
            kwargs["dimensions"] = self._dimensions_arg
        if self._halfvec_arg is not None:
            kwargs["halfvec"] = self._halfvec_arg
        if self.embedding_model:
            kwargs["embedding_model"] = self.embedding_model
        if self.replaces:
            kwargs["replaces"] = self.replaces
        if self.passages:
            kwargs["passages"] = self.passages.as_option()
        return name, "semantic.fields.EmbeddingField", args, kwargs

    def db_type(self, connection: Any) -> str:
        return "halfvec" if self.halfvec else "vector"

    def sized_db_type(self) -> str:
        """The column's type with this field's size, as vectors are written and indexed."""
        return f"{self.db_type(None)}({self.dimensions})"

    def sized_output_field(self) -> models.Field:
        storage = HalfVectorField if self.halfvec else VectorField
        return storage(dimensions=self.dimensions)

    def indexed_vector(self, ref: type[F] = F) -> Cast:
        """``<column>::vector(<size>)``: the expression :class:`EmbeddingIndex` indexes.

        Distances must be computed on this expression for the HNSW index to serve them.
        """
        return Cast(ref(self.attname), output_field=self.sized_output_field())

    def of_this_size(self) -> Q:
        """Rows whose vector has this field's size: the HNSW index's predicate."""
        return Q(Exact(VectorDims(F(self.attname)), Value(self.dimensions)))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if self.halfvec:
            return HalfVectorField.from_db_value(self, value, expression, connection)  # type: ignore[arg-type]
        return super().from_db_value(value, expression, connection)

    def to_python(self, value: Any) -> Any:
        if self.is_null_text(value):
            return None
        if self.halfvec:
            return HalfVectorField.to_python(self, value)  # type: ignore[arg-type]
        return super().to_python(value)

    def get_prep_value(self, value: Any) -> Any:
        if self.halfvec:
            return HalfVectorField.get_prep_value(self, value)  # type: ignore[arg-type]
        return super().get_prep_value(value)

    def contribute_to_class(self, cls: type[models.Model], name: str, private_only: bool = False) -> None:
        bound_to = self.__dict__.get("model")  # set when this is a copy of another model's field
        super().contribute_to_class(cls, name, private_only=private_only)
        # Historical models built by migrations carry the companion columns and the
        # index themselves; abstract models pass the field on to their subclasses.
        if cls._meta.abstract or cls.__module__ == "__fake__":
            return
        if bound_to is not None and not issubclass(cls, bound_to):
            # A model built from copies of another model's fields (django-simple-history's
            # historical records): the column keeps the vector as it was, and that is all.
            # Its companions are copies too, and nothing embeds, sweeps or hooks the copy.
            self.copied_from = bound_to
            return
        self.python_parts = tuple(n for n in self.text_parts() if is_python_part(cls, n))
        existing = {f.name for f in cls._meta.local_fields}
        companions: dict[str, models.Field] = {
            self.embedded_hash_name: EmbeddedHashField(max_length=HASH_LENGTH, null=True, blank=True, editable=False),
            self.spec_name: EmbeddingSpecField(max_length=200, null=True, blank=True, editable=False, db_index=True),
            self.pending_since_name: PendingSinceField(null=True, blank=True, editable=False, embedding_field=name),
        }
        if self.python_parts:
            companions[self.source_hash_name] = SourceHashField(
                max_length=HASH_LENGTH, null=True, blank=True, editable=False, embedding_field=name
            )
        for companion_name, companion in companions.items():
            if companion_name not in existing:
                cls.add_to_class(companion_name, companion)
        models.signals.class_prepared.connect(self._add_indexes, sender=cls, weak=False)

    def _add_indexes(self, sender: type[models.Model], **kwargs: Any) -> None:
        """Put the pending index into the model's Meta, once every field exists.

        Also tells each :class:`EmbeddingIndex` on this field its size, so a size
        change makes ``makemigrations`` rebuild that index.
        """
        from semantic.indexes import EmbeddingIndex

        for index in sender._meta.indexes:
            if isinstance(index, EmbeddingIndex) and index.fields == [self.name]:
                index.dimensions, index.halfvec = self.dimensions, self.halfvec
        index = self.pending_index(sender)
        if index.name not in {i.name for i in sender._meta.indexes}:
            sender._meta.indexes = [*sender._meta.indexes, index]
            # Migrations read a model's indexes from the Meta options it declared.
            sender._meta.original_attrs["indexes"] = sender._meta.indexes

    def pending_index(self, cls: type[models.Model]) -> models.Index:
        """A partial index of the rows whose text changed since it was embedded.

        Its condition is :meth:`pending` itself, so the worker's search for work costs
        as much as there is work, not as much as the table.
        """
        digest = hashlib.md5(f"{cls._meta.db_table}.{self.name}".encode()).hexdigest()[:10]
        return models.Index(
            fields=[self.embedded_hash_name], condition=self.pending(), name=PENDING_INDEX_NAME.format(digest=digest)
        )

    @property
    def embedded_hash_name(self) -> str:
        return f"{self.name}_embedded_hash"

    @property
    def spec_name(self) -> str:
        return f"{self.name}_spec"

    @property
    def pending_since_name(self) -> str:
        return f"{self.name}_pending_since"

    # -- what needs doing ----------------------------------------------------------

    @property
    def backend(self) -> Any:
        """The backend that embeds this field, for its ``embedding_model``."""
        from semantic.backends import get_backend

        return get_backend(self.embedding_model)

    def spec(self) -> str:
        """Identifies vectors made under the current settings: model, task type, size."""
        return f"{self.backend.model_id}|{self.task_type}|{self.dimensions}"

    def passage_sizes(self) -> tuple[int, int]:
        """``(max_chars, overlap)`` of this field's passages with the current backend."""
        if not self.passages:
            raise ValueError(f"{self.model._meta.label}.{self.name} has no passages; set passages=True on the field.")
        backend = self.backend
        return self.passages.sizes(backend.passage_chars or backend.max_input_chars)

    def pending(self, ref: type[F] = F) -> Q:
        """Rows whose text changed since their vector was made (or that never had one);
        with text from Python, also the rows whose text was never hashed."""
        changed = Q(IsDistinctFrom(ref(self.embedded_hash_name), self.stored_text_hash(ref)))
        if self.text_from_python():
            return changed | Q(IsNull(ref(self.source_hash_name), True))
        return changed

    def stale(self) -> Q:
        """Rows with a vector made by another model, task type or size than now."""
        spec = self.spec()
        # "spec <> current" spelled as two ranges so the index on the spec column serves it.
        other = (
            Q(**{f"{self.spec_name}__isnull": True})
            | Q(**{f"{self.spec_name}__lt": spec})
            | Q(**{f"{self.spec_name}__gt": spec})
        )
        return Q(**{f"{self.attname}__isnull": False}) & other

    def needs_embedding(self) -> Q:
        """Rows whose vector is missing, out of date, or made by another model."""
        return self.pending() | self.stale()

    def searchable(self) -> Q:
        """Rows whose stored vector may be compared with vectors made now.

        Queries use this and nothing else to pick rows, so a vector made by another
        model, task type or size is never compared with the query's.
        """
        return Q(**{f"{self.attname}__isnull": False, self.spec_name: self.spec()}) & self.of_this_size()

    def is_current(self) -> Q:
        """Rows whose vector matches their text and the current settings."""
        return ~self.pending() & Q(**{f"{self.attname}__isnull": False, self.spec_name: self.spec()})
