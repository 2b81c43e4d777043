"""An HNSW index for an EmbeddingField, with the cosine operator class its storage needs."""

from __future__ import annotations

import copy
from typing import Any

from pgvector.django import HnswIndex


class EmbeddingIndex(HnswIndex):
    """HNSW index on one EmbeddingField for cosine distance (what ``similar_to`` uses).

    ``Meta.indexes = [EmbeddingIndex(fields=["embedding"], name="question_embedding_hnsw")]``

    The operator class (``vector_cosine_ops`` or ``halfvec_cosine_ops``) follows the
    field's storage. ``m`` and ``ef_construction`` are pgvector's build parameters
    (defaults 16 and 64).
    """

    def __init__(
        self, *, fields: list[str], name: str, m: int | None = None, ef_construction: int | None = None, **kwargs: Any
    ):
        if len(fields) != 1:
            raise ValueError("EmbeddingIndex covers exactly one EmbeddingField.")
        super().__init__(fields=fields, name=name, m=m, ef_construction=ef_construction, **kwargs)

    def deconstruct(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        _, args, kwargs = super().deconstruct()
        return "semantic.indexes.EmbeddingIndex", args, kwargs

    def create_sql(self, model: Any, schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        field = model._meta.get_field(self.fields[0])
        index = copy.copy(self)
        index.opclasses = ("halfvec_cosine_ops" if getattr(field, "halfvec", False) else "vector_cosine_ops",)
        return HnswIndex.create_sql(index, model, schema_editor, using=using, **kwargs)
