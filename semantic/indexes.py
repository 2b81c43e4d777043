"""An HNSW index for an EmbeddingField, with the cosine operator class its storage needs."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.indexes import OpClass
from django.db.models import F, Q
from django.db.models.expressions import Func, Value
from django.db.models.fields import IntegerField
from django.db.models.functions import Cast
from django.db.models.indexes import IndexExpression
from django.db.models.lookups import Exact
from pgvector.django import HalfVectorField, HnswIndex, VectorField


class EmbeddingIndex(HnswIndex):
    """HNSW index on one EmbeddingField for cosine distance (what ``similar_to`` uses).

    ``Meta.indexes = [EmbeddingIndex(fields=["embedding"], name="question_embedding_hnsw")]``

    The field's column holds vectors of any size (so a size change alters no column
    unless it crosses 2,000 dimensions, where ``vector`` becomes ``halfvec``),
    and HNSW needs one size: the index covers ``embedding::vector(<size>)`` for the rows
    of the field's size, with the operator class its storage needs
    (``vector_cosine_ops`` or ``halfvec_cosine_ops``). The field fills in ``dimensions``
    and ``halfvec``, so changing the field's size makes ``makemigrations`` rebuild the
    index. ``m`` and ``ef_construction`` are pgvector's build parameters (defaults 16
    and 64).
    """

    def __init__(
        self,
        *,
        fields: list[str],
        name: str,
        m: int | None = None,
        ef_construction: int | None = None,
        dimensions: int | None = None,
        halfvec: bool | None = None,
        **kwargs: Any,
    ):
        if len(fields) != 1:
            raise ValueError("EmbeddingIndex covers exactly one EmbeddingField.")
        super().__init__(fields=fields, name=name, m=m, ef_construction=ef_construction, **kwargs)
        self.dimensions = dimensions
        self.halfvec = halfvec

    def deconstruct(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        _, args, kwargs = super().deconstruct()
        if self.dimensions is not None:
            kwargs["dimensions"] = self.dimensions
        if self.halfvec:
            kwargs["halfvec"] = True
        return "semantic.indexes.EmbeddingIndex", args, kwargs

    def create_sql(self, model: Any, schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        field = model._meta.get_field(self.fields[0])
        dimensions = self.dimensions or field.dimensions
        halfvec = bool(getattr(field, "halfvec", self.halfvec))
        storage = HalfVectorField if halfvec else VectorField
        sized = Cast(F(field.name), output_field=storage(dimensions=dimensions))
        if OpClass not in IndexExpression.wrapper_classes:
            # What django.contrib.postgres does when installed, so "(expr) opclass" is
            # written in that order; projects without it in INSTALLED_APPS need it too.
            IndexExpression.register_wrappers(*IndexExpression.wrapper_classes, OpClass)
        index = HnswIndex(
            OpClass(sized, name="halfvec_cosine_ops" if halfvec else "vector_cosine_ops"),
            name=self.name,
            m=self.m,
            ef_construction=self.ef_construction,
            condition=Q(
                Exact(Func(F(field.name), function="vector_dims", output_field=IntegerField()), Value(dimensions))
            ),
        )
        return index.create_sql(model, schema_editor, using=using, **kwargs)
