"""Rows ranked by their best passage: ``similar_to(query, passages=True)``.

Each row's distance is the smallest cosine distance of its passages to the query,
so an article is found by its tenth paragraph as well as by its first. The rows
come back annotated like ``similar_to()``'s (``distance``, ``similarity``) and with
the passage that matched: ``passage_text``, ``passage_start`` and ``passage_end``
(character offsets in the row's text) and ``passage_position``.

The search is exact: every passage of the rows the queryset admits is compared
with the query. The passage table holds the vectors of every field with
``passages``, of any size, so no HNSW index can be built on it (pgvector indexes one
declared size). Comparing only the admitted rows' passages keeps full recall under
any filter, and costs in proportion to those passages: a filter that narrows the rows
narrows the work. Each row's passages are found through the table's unique index on
(model, field, row, position).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import models
from django.db.models import CharField, Exists, F, FloatField, OuterRef, Q, Subquery
from django.db.models.expressions import ExpressionWrapper, Value
from django.db.models.functions import Cast
from pgvector.django import CosineDistance

from semantic.fields import EmbeddingField

#: What a passage search annotates, beside ``distance`` and ``similarity``.
PASSAGE_ANNOTATIONS = {
    "passage_text": "text",
    "passage_start": "start",
    "passage_end": "end",
    "passage_position": "position",
}


def searchable_passages(field: EmbeddingField) -> models.QuerySet:
    """Passages of ``field`` made by the current model, task type and size: the only ones compared."""
    # Imported here: this module is imported with the package, before the app's models may be.
    from semantic.models import Passage

    return Passage.objects.filter(model_label=field.model._meta.label, field_name=field.name, spec=field.spec())


def passage_distance(vector: Sequence[float]) -> CosineDistance:
    return CosineDistance(F("vector"), Value("[" + ",".join(["%.9g"] * len(vector)) % tuple(vector) + "]"))


def by_passages(
    queryset: models.QuerySet,
    field: EmbeddingField,
    vector: Sequence[float],
    *,
    exclude_pk: Any = None,
    min_similarity: float | None = None,
) -> models.QuerySet:
    """``queryset``'s rows that have passages, nearest passage first (see the module docstring)."""
    if not field.passages:
        label = f"{field.model._meta.label}.{field.name}"
        raise ValueError(f"{label} has no passages to search; set passages=True on the field.")
    mine = searchable_passages(field).filter(object_pk=Cast(OuterRef("pk"), CharField()))
    best = mine.annotate(_distance=passage_distance(vector)).order_by("_distance", "position")
    qs = queryset.filter(Exists(mine))
    if exclude_pk is not None:
        qs = qs.filter(~Q(pk=exclude_pk))
    qs = qs.annotate(distance=Subquery(best.values("_distance")[:1], output_field=FloatField()))
    qs = qs.annotate(similarity=ExpressionWrapper(Value(1.0) - F("distance"), output_field=FloatField()))
    if min_similarity is not None:
        qs = qs.filter(distance__lte=1.0 - min_similarity)
    qs = qs.annotate(**{name: Subquery(best.values(column)[:1]) for name, column in PASSAGE_ANNOTATIONS.items()})
    return qs.defer(field.attname).order_by("distance", "pk")
