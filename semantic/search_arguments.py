"""What the search methods refuse before any work, and the messages that say how to ask instead:
a sliced queryset, a combined one (``union()``), a similarity threshold outside -1..1."""

from __future__ import annotations

from typing import Any

from django.db import NotSupportedError, models

#: Searching a slice would rank the whole table and keep the slice's size: refused, as Django refuses filter().
SLICED = (
    "Cannot filter a query once a slice has been taken. Search first, then slice: qs.similar_to(q)[:10]. "
    "To search only the sliced rows, search qs.filter(pk__in=list(sliced.values_list('pk', flat=True)))."
)

#: A union's (intersection's, difference's) own filters are never compiled: a search of one
#: would fail deep in Django (IndexError) after paying for the query's embedding.
COMBINED = (
    "{method}() works on the rows of one queryset, not a union() (nor intersection() or difference()): "
    "filter one queryset, Model.objects.filter(Q(...) | Q(...)).{method}(...), or combine searches, "
    "a.similar_to(q).union(b.similar_to(q)).order_by('distance', 'pk')."
)


def refuse_combined(queryset: models.QuerySet, message: str) -> None:
    """Raise ``message`` for a ``union()`` (``intersection()``, ``difference()``)."""
    if queryset.query.combinator:
        raise NotSupportedError(message)


def check_threshold(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} is a cosine similarity from -1 to 1, not {value!r}.")
