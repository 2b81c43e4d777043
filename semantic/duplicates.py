"""Finding near-duplicate rows with one index probe per row."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, OperationalError, connections, models, transaction
from django.db.models.expressions import RawSQL
from pgvector.django import CosineDistance

from semantic import tenancy
from semantic.fields import EmbeddingField
from semantic.operations import sqlstate

T = TypeVar("T", bound=Hashable)

OUTER = "semantic_outer"
#: Tables smaller than this are searched over one connection.
SPLIT_MIN_ROWS = 5_000
MAX_WORKERS = 8
#: pgvector's largest hnsw.ef_search.
MAX_EF_SEARCH = 1000
#: SQLSTATE query_canceled: a statement_timeout ran out (or someone cancelled the statement).
QUERY_CANCELED = "57014"

SEARCH_CANCELED = (
    "PostgreSQL cancelled the duplicate search of {label}: it took longer than the connection's "
    "statement_timeout ({timeout}), often set for the database role (ALTER ROLE ... SET statement_timeout) "
    "on managed services. The search's time grows with the rows searched: filter the queryset to fewer rows, "
    "or give this search more time in a transaction of its own: with transaction.atomic(): "
    "cursor.execute(\"SET LOCAL statement_timeout = '10min'\") and the call, in the same block; "
    "or raise the role's statement_timeout."
)


class DuplicateSearchCanceled(OperationalError):
    """The duplicate search met the connection's ``statement_timeout``.

    An OperationalError, as the driver's error it replaces (its ``__cause__``), so code that
    caught that still does; ``timeout`` is the setting as PostgreSQL shows it (``"1s"``).
    """

    def __init__(self, message: str, timeout: str) -> None:
        super().__init__(message)
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        # Task queues, multiprocessing and the parallel test runner pickle errors; the default
        # rebuilds an exception from its args alone, which would lose the timeout and fail.
        return type(self), (self.args[0], self.timeout), self.__dict__


def find_pairs(
    queryset: models.QuerySet,
    field: EmbeddingField,
    threshold: float,
    *,
    neighbours: int,
    ef_search: int,
    max_neighbours: int | None = None,
    workers: int | None = None,
) -> list[tuple[Any, Any, float]]:
    """Primary-key pairs ``(a, b, similarity)``, ``a < b``, among the queryset's rows.

    Every row asks the HNSW index for its ``neighbours`` nearest other rows (a
    LATERAL join), and again for more while all of them are duplicates (see
    :func:`probe`). A small ``ef_search`` keeps each probe cheap: near duplicates
    are the easiest neighbours to find. PostgreSQL does not run such a join in parallel, so
    large tables are split into ``workers`` primary-key ranges searched over as many
    connections at once (one per CPU core by default; one inside a transaction,
    whose uncommitted rows other connections could not see).
    """
    rows = queryset.filter(field.searchable()).order_by()
    connection = connections[queryset.db]
    # Inside the caller's transaction, a savepoint: a cancelled statement must leave the
    # transaction usable, to read the time-out that cancelled it and for the caller to go on.
    kept = transaction.atomic(using=queryset.db) if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with kept:
            found = _search(rows, connection, field, threshold, neighbours, ef_search, max_neighbours, workers)
    except OperationalError as exc:
        if sqlstate(exc) != QUERY_CANCELED or not (timeout := statement_timeout(connection)):
            raise
        label = queryset.model._meta.label
        raise DuplicateSearchCanceled(SEARCH_CANCELED.format(label=label, timeout=timeout), timeout) from exc
    best: dict[tuple[Any, Any], float] = {}
    for a, b, similarity in found:
        best[(a, b)] = max(similarity, best.get((a, b), -1.0))
    return sorted(((a, b, s) for (a, b), s in best.items()), key=lambda p: (-p[2], p[0], p[1]))


def _search(
    rows: models.QuerySet,
    connection: Any,
    field: EmbeddingField,
    threshold: float,
    neighbours: int,
    ef_search: int,
    max_neighbours: int | None,
    workers: int | None,
) -> list[tuple[Any, Any, float]]:
    automatic = workers is None
    if workers is None:
        workers = 1 if connection.in_atomic_block else min(os.cpu_count() or 1, MAX_WORKERS)
    parts = split(rows, workers, min_rows=SPLIT_MIN_ROWS if automatic else 2)
    if len(parts) == 1:
        found = probe(parts[0], rows, field, threshold, neighbours, ef_search, max_neighbours)
    else:
        # Each thread's own connection starts in the public schema: it is pointed at the caller's tenant.
        tenant = tenancy.current(rows.db)
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            jobs = [
                pool.submit(
                    in_own_connection,
                    tenant,
                    rows.db,
                    probe,
                    p,
                    rows,
                    field,
                    threshold,
                    neighbours,
                    ef_search,
                    max_neighbours,
                )
                for p in parts
            ]
            found = [pair for job in jobs for pair in job.result()]
    return found


def statement_timeout(connection: Any) -> str | None:
    """The connection's statement_timeout as PostgreSQL shows it; None when there is none
    (then a cancelled statement was someone's cancel request, not a time-out)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('statement_timeout')")
            (timeout,) = cursor.fetchone()
    except DatabaseError:
        return None
    return None if timeout == "0" else timeout


def split(rows: models.QuerySet, workers: int, *, min_rows: int) -> list[models.QuerySet]:
    """The rows cut into about ``workers`` primary-key ranges of equal size."""
    total = rows.count()
    if workers <= 1 or total < max(min_rows, workers):
        return [rows]
    ordered = rows.order_by("pk").values_list("pk", flat=True)
    bounds = [ordered[total * i // workers] for i in range(1, workers)]
    parts = [rows.filter(pk__lt=bounds[0])]
    parts += [rows.filter(pk__gte=low, pk__lt=high) for low, high in zip(bounds, bounds[1:])]
    parts.append(rows.filter(pk__gte=bounds[-1]))
    return parts


def probe(
    outer: models.QuerySet,
    rows: models.QuerySet,
    field: EmbeddingField,
    threshold: float,
    neighbours: int,
    ef_search: int,
    max_neighbours: int | None,
) -> list[tuple[Any, Any, float]]:
    """Pairs found by probing the index for each row of ``outer``, deeper where needed.

    A row whose ``neighbours`` nearest other rows are all duplicates may have more:
    those rows are probed again for twice as many, until each row's farthest
    neighbour falls below the threshold, every row has been looked at, or
    ``max_neighbours`` is reached (a bound on the work a low threshold can cause).
    """
    found: list[tuple[Any, Any, float]] = []
    depth, deepest = neighbours, None
    while True:
        pairs, saturated = probe_once(outer, rows, field, threshold, depth, ef_search)
        found += pairs
        if not saturated:
            return found
        if deepest is None:
            deepest = rows.count() - 1
            if max_neighbours is not None:
                deepest = min(deepest, max_neighbours)
        if depth >= deepest:
            return found
        depth = min(depth * 2, deepest)
        outer = rows.filter(pk__in=saturated)


def probe_once(
    outer: models.QuerySet,
    rows: models.QuerySet,
    field: EmbeddingField,
    threshold: float,
    depth: int,
    ef_search: int,
) -> tuple[list[tuple[Any, Any, float]], list[Any]]:
    """Pairs of each ``outer`` row with its ``depth`` nearest other rows, and the rows
    whose every one of those neighbours was a duplicate (there may be more)."""
    connection = connections[rows.db]
    column = connection.ops.quote_name(field.attname)
    outer_sql, outer_params = outer.values("pk", field.attname).query.sql_with_params()
    inner = (
        rows.exclude(pk=RawSQL(f'{OUTER}."pk"', []))
        .annotate(_distance=CosineDistance(field.indexed_vector(), RawSQL(f"{OUTER}.{column}", [])))
        .order_by("_distance")
        .values("pk", "_distance")[:depth]
    )
    inner_sql, inner_params = inner.query.sql_with_params()
    sql = f"""
        SELECT {OUTER}."pk", near."pk", 1 - near._distance
        FROM ({outer_sql}) {OUTER}
        CROSS JOIN LATERAL ({inner_sql}) near
        WHERE near._distance <= %s
    """
    # The scan's candidate list must hold the row itself and ``depth`` others;
    # past pgvector's largest list, the iterative scan keeps going.
    settings = [("hnsw.ef_search", str(min(max(ef_search, depth + 1), MAX_EF_SEARCH)))]
    if depth + 1 > MAX_EF_SEARCH:
        settings.append(("hnsw.iterative_scan", "relaxed_order"))
    with transaction.atomic(using=rows.db), connection.cursor() as cursor:
        for name, value in settings:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
        cursor.execute(sql, [*outer_params, *inner_params, 1.0 - threshold])
        result = cursor.fetchall()
    per_row = Counter(a for a, _, _ in result)
    pairs = [(min(a, b), max(a, b), float(similarity)) for a, b, similarity in result]
    return pairs, [pk for pk, count in per_row.items() if count >= depth]


def in_own_connection(tenant: Any, using: str, function: Any, *args: Any) -> Any:
    """Run ``function`` in this thread's own connection to ``using``, pointed at ``tenant``
    (:func:`semantic.tenancy.current`: schemas per tenant), closed afterwards."""
    try:
        with tenancy.pointed_as(using, tenant):
            return function(*args)
    finally:
        connections.close_all()


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
