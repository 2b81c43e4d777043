"""Duplicate review in portions a web request can afford.

``duplicates()`` finds at most a few pairs per row, so its result grows with the table.
The groups those pairs link do not stay small: at a low threshold every row is linked
to its neighbours, and one group can hold the whole table. Listing every pair of a
group, or every member, then grows with its size (and comparing all members with each
other, with its square). A review therefore keeps each group's most similar pairs, up to
a cap, and counts what it left out so the page can say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models import FloatField, Subquery, Value
from django.db.models.functions import Cast
from pgvector.django import CosineDistance

from semantic.duplicates import connected_groups
from semantic.fields import EmbeddingField


@dataclass
class ReviewGroup:
    """One group of likely duplicates, with the pairs a page shows of it."""

    #: Every row of the group, in the order its pairs first named them.
    rows: list[Any]
    #: The group's most similar pairs ``(a, b, similarity)``, most similar first.
    pairs: list[tuple[Any, Any, float]]
    #: How many pairs link the group, shown or not.
    total_pairs: int
    #: The least and the most similar of all its pairs, shown or not.
    lowest: float
    highest: float

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def cut(self) -> bool:
        return len(self.pairs) < self.total_pairs

    @property
    def shown_rows(self) -> list[Any]:
        """The rows the shown pairs name, first the first row of the most similar pair.

        At most twice as many as the pairs shown, however large the group.
        """
        return list(dict.fromkeys(row for a, b, _ in self.pairs for row in (a, b)))


def review_groups(pairs: Sequence[tuple[Any, Any, float]], *, pairs_shown: int) -> list[ReviewGroup]:
    """Connected groups of ``pairs``, largest first, each keeping its ``pairs_shown`` most similar pairs.

    Work and memory grow with the number of pairs, never with the square of a group.
    """
    ranked = sorted(pairs, key=lambda pair: -pair[2])
    groups = connected_groups((a, b) for a, b, _ in ranked)
    number = {row: n for n, group in enumerate(groups) for row in group}
    shown: list[list[tuple[Any, Any, float]]] = [[] for _ in groups]
    totals = [0] * len(groups)
    lowest = [1.0] * len(groups)
    for pair in ranked:
        n = number[pair[0]]
        totals[n] += 1
        lowest[n] = pair[2]
        if len(shown[n]) < pairs_shown:
            shown[n].append(pair)
    return [
        ReviewGroup(rows=group, pairs=shown[n], total_pairs=totals[n], lowest=lowest[n], highest=shown[n][0][2])
        for n, group in enumerate(groups)
    ]


def similarities_to(rows: models.QuerySet, first: Any, others: list[Any], field: EmbeddingField) -> dict[Any, float]:
    """Cosine similarity of each of the ``others`` primary keys to the row ``first``, as duplicate
    search measures it (on the indexed vector), in one query.

    A group links rows through chains of pairs: two of its rows need not be a pair
    themselves, so a review page asks the database rather than reading pairs.
    """
    anchor = rows.filter(pk=first).values(vector=field.indexed_vector())
    similarity = Value(1.0) - CosineDistance(field.indexed_vector(), Subquery(anchor))
    found = (
        rows.filter(pk__in=others)
        .order_by()
        .annotate(semantic_similarity=Cast(similarity, FloatField()))
        .values_list("pk", "semantic_similarity")
    )
    return {pk: value for pk, value in found if value is not None}


def with_objects(rows: models.QuerySet, groups: Any) -> None:
    """Put the rows themselves in place of the primary keys of these groups (a page's)."""
    objects = rows.model._base_manager.using(rows.db).in_bulk({pk for group in groups for pk in group.rows})
    for group in groups:
        group.rows = [objects[pk] for pk in group.rows]
        group.pairs = [(objects[a], objects[b], s) for a, b, s in group.pairs]
