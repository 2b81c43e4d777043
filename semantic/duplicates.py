"""Finding near-duplicate rows with one index probe per row."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

from django.db import connections, models, transaction
from django.db.models.expressions import RawSQL
from pgvector.django import CosineDistance

from semantic.fields import EmbeddingField

T = TypeVar("T", bound=Hashable)

OUTER = "semantic_outer"


def find_pairs(
    queryset: models.QuerySet,
    field: EmbeddingField,
    threshold: float,
    *,
    neighbours: int,
    ef_search: int,
) -> list[tuple[Any, Any, float]]:
    """Primary-key pairs ``(a, b, similarity)``, ``a < b``, among the queryset's rows.

    Every row asks the HNSW index for its ``neighbours`` nearest rows (a LATERAL
    join; PostgreSQL spreads the rows over parallel workers). A small ``ef_search``
    keeps each probe cheap: near duplicates are the easiest neighbours to find.
    """
    column = connections[queryset.db].ops.quote_name(field.attname)
    rows = queryset.filter(field.searchable()).order_by()
    outer_sql, outer_params = rows.values("pk", field.attname).query.sql_with_params()
    inner = (
        rows.annotate(_distance=CosineDistance(field.attname, RawSQL(f"{OUTER}.{column}", [])))
        .order_by("_distance")
        .values("pk", "_distance")[:neighbours]
    )
    inner_sql, inner_params = inner.query.sql_with_params()
    pk = '"pk"'
    sql = f"""
        SELECT LEAST({OUTER}.{pk}, near.{pk}) AS a, GREATEST({OUTER}.{pk}, near.{pk}) AS b,
               MAX(1 - near._distance) AS similarity
        FROM ({outer_sql}) {OUTER}
        CROSS JOIN LATERAL ({inner_sql}) near
        WHERE near.{pk} <> {OUTER}.{pk} AND near._distance <= %s
        GROUP BY 1, 2
        ORDER BY similarity DESC, a, b
    """
    connection = connections[queryset.db]
    with transaction.atomic(using=queryset.db), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(max(ef_search, neighbours))])
        cursor.execute(sql, [*outer_params, *inner_params, 1.0 - threshold])
        return [(a, b, float(similarity)) for a, b, similarity in cursor.fetchall()]


def connected_groups(pairs: Iterable[tuple[T, T]]) -> list[list[T]]:
    """Connected components of the graph the pairs draw, largest first."""
    parent: dict[T, T] = {}

    def root(item: T) -> T:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    order: dict[T, int] = {}
    for a, b in pairs:
        for item in (a, b):
            order.setdefault(item, len(order))
        parent[root(a)] = root(b)
    groups: dict[T, list[T]] = {}
    for item in order:
        groups.setdefault(root(item), []).append(item)
    return sorted(groups.values(), key=len, reverse=True)
