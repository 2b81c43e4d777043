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

from semantic.duplicates import connected_groups


@dataclass
class ReviewGroup:
    """One group of likely duplicates, with the pairs a page shows of it."""

    #: Every row of the group, in the order its pairs first named them.
    rows: list[Any]
    #: The group's most similar pairs ``(a, b, similarity)``, most similar first.
    pairs: list[tuple[Any, Any, float]]
    #: How many pairs link the group, shown or not.
    total_pairs: int

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def cut(self) -> bool:
        return len(self.pairs) < self.total_pairs


def review_groups(pairs: Sequence[tuple[Any, Any, float]], *, pairs_shown: int) -> list[ReviewGroup]:
    """Connected groups of ``pairs``, largest first, each keeping its ``pairs_shown`` most similar pairs.

    Work and memory grow with the number of pairs, never with the square of a group.
    """
    ranked = sorted(pairs, key=lambda pair: -pair[2])
    groups = connected_groups((a, b) for a, b, _ in ranked)
    number = {row: n for n, group in enumerate(groups) for row in group}
    shown: list[list[tuple[Any, Any, float]]] = [[] for _ in groups]
    totals = [0] * len(groups)
    for pair in ranked:
        n = number[pair[0]]
        totals[n] += 1
        if len(shown[n]) < pairs_shown:
            shown[n].append(pair)
    return [ReviewGroup(rows=group, pairs=shown[n], total_pairs=totals[n]) for n, group in enumerate(groups)]
