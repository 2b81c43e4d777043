"""How a ``similar_to()`` search runs: its index settings, and exact or index under a filter.

**One round trip.** The settings travel in the same message as the query: the
statement Django sends is preceded by ``SELECT set_config(..., true)`` (or the DO
block below) and sent as one simple query. PostgreSQL runs the statements of such a
message in turn, planning each after the one before has run, and, outside a
transaction, as one transaction: the settings end with the search. Inside the
caller's transaction they would outlast it, so the message first keeps the values it
will change in transaction-local custom settings (``semantic.saved_*``) and ends by
putting them back. A connection that binds parameters on the server (a prepared
statement holds one command) sends the same statements one by one.

**Exact or index under a filter.** The HNSW index returns candidates nearest first
and a filter drops those it does not keep. When it keeps few rows, even pgvector's
iterative scan walks deep into the graph to find them, slowly and missing some
(docs/benchmarks.md: recall 0.72 at 1%, 0.96 at 10% on the benchmark's clusters),
while comparing every kept row is exact and fast. When it keeps many, the iterative
scan with a longer search list (``FILTERED_EF_SEARCH``) finds them all and an
exact search would compare tens of thousands. The server makes the choice in the same
message, from the planner's estimate of the rows the caller's filters keep: a DO block
runs ``EXPLAIN`` of those filters alone and, for at most ``EXACT_SEARCH_MAX_ROWS``,
turns index scans off for the search (PostgreSQL then reads the kept rows through
another index or a scan and sorts them: exact; joins in the same statement do without
index scans too); otherwise it sets the iterative scan: in relaxed order when the rows
come back with their distance, so the fetched rows can be sorted again
(:func:`carries_distance`), else in strict order.
An estimate costs planning; the count it replaces read every kept row, and every row
of the table when the filtered column has no index.

**Exact on a small table.** Without filters the estimate is the table's, and a table
of at most ``EXACT_SEARCH_MAX_ROWS`` rows is searched exactly too: the index scan is
approximate at any size (on a 700-row table it left out the 4th and 7th nearest rows
of a query), and ``count()`` and a ``Paginator``, which count exactly, would number
rows that no page shows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.core.exceptions import EmptyResultSet
from django.db import NotSupportedError, connections, models, transaction
from django.db.models import F, FloatField, Q, Value
from django.db.models.expressions import ExpressionWrapper
from django.db.models.query import ModelIterable, ValuesIterable

from semantic.conf import semantic_settings as conf

#: Index tuples an iterative scan may visit before it gives up (pgvector's default is 20,000).
MAX_SCAN_TUPLES = 200_000
#: pgvector's default ``hnsw.ef_search``: an unfiltered scan returns this many rows without iterating.
DEFAULT_EF_SEARCH = 40
#: Smallest search list for a broadly filtered query, whose first candidates are mostly filtered out.
FILTERED_EF_SEARCH = 200
#: The same when the rows come back with their distance and are sorted after the fetch (relaxed order).
RELAXED_EF_SEARCH = 100
ITERATIVE = {"hnsw.iterative_scan": "strict_order", "hnsw.max_scan_tuples": str(MAX_SCAN_TUPLES)}
RELAXED = {"hnsw.iterative_scan": "relaxed_order", "hnsw.max_scan_tuples": str(MAX_SCAN_TUPLES)}
#: No index scan, so no HNSW scan: PostgreSQL compares every row the filters keep.
EXACT = {"enable_indexscan": "off"}
#: Transaction-local custom settings that keep the caller's values while a search changes them.
SAVED_PREFIX = "semantic.saved_"
#: similar_to()'s order: nearest first, rows at the same distance by primary key, so that
#: pages do not repeat or skip tied rows (duplicates are tied). PostgreSQL keeps the HNSW
#: index scan and sorts only the ties (an incremental sort on the presorted distance).
SEARCH_ORDER = ("distance", "pk")

#: A search on another database (a project's SQLite test settings) stops here, saying so.
NOT_POSTGRESQL = (
    "Semantic search runs only on PostgreSQL with pgvector, and database {alias!r} is {vendor}. "
    "Run the tests that search on PostgreSQL (README: Testing your code)."
)
#: Run after ``semantic.probe`` is set to the caller's filters as SQL (their planner estimate decides).
ESTIMATE_AND_CHOOSE = """DO $semantic$DECLARE estimate json;
BEGIN
  EXECUTE 'EXPLAIN (FORMAT JSON) ' || current_setting('semantic.probe') INTO estimate;
  IF (estimate -> 0 -> 'Plan' ->> 'Plan Rows')::float8 <= {limit} THEN
    {few}
  ELSE
    {many}
  END IF;
END$semantic$"""


@dataclass(frozen=True)
class SemanticSearch:
    """What evaluating a ``similar_to()`` queryset needs to know, kept on the queryset."""

    #: Where similar_to()'s own WHERE conditions start, and how many there are; the rest are the caller's.
    first_own: int
    own_filters: int
    ef_search: int | None


@dataclass(frozen=True)
class SearchPlan:
    """The settings to send with one search statement.

    ``settings`` always; with a ``probe`` (the caller's filters as SQL and parameters),
    ``few`` when the planner estimates it keeps at most ``limit`` rows, else ``many``.
    With ``resort``, the rows fetched must be sorted by distance again (relaxed order).
    """

    settings: dict[str, str] = field(default_factory=dict)
    probe: tuple[str, Any] | None = None
    few: dict[str, str] = field(default_factory=dict)
    many: dict[str, str] = field(default_factory=dict)
    limit: int = 0
    resort: bool = False

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.settings, *self.few, *self.many]))


def plan(queryset: models.QuerySet, search: SemanticSearch) -> SearchPlan | None:
    """The settings a search needs, or None.

    Filtered: exact or iterative, chosen by the server (module docstring). Unfiltered:
    exact on a small table; on a large one the iterative scan only when the search asks
    for more rows than the scan's list holds (``ef_search``): pages past the first few,
    or no slice at all. Shallow ones need nothing, or only their own ``ef_search``.
    """
    query = queryset.query
    try:
        probe = callers_filters(queryset, search)
    except EmptyResultSet:
        return None  # nothing can match: Django runs no query at all
    if len(query.where.children) > search.own_filters:
        relaxed = carries_distance(queryset)
        if relaxed:
            broad = {**RELAXED, "hnsw.ef_search": str(max(search.ef_search or 0, RELAXED_EF_SEARCH))}
        else:
            broad = {**ITERATIVE, "hnsw.ef_search": str(max(search.ef_search or 0, FILTERED_EF_SEARCH))}
        return SearchPlan(probe=probe, few=EXACT, many=broad, limit=conf.EXACT_SEARCH_MAX_ROWS, resort=relaxed)
    # A table of few rows is searched exactly too: the index scan can miss rows even
    # there, and a count() or a Paginator (exact) would then number rows no page shows.
    ef_search = {"hnsw.ef_search": str(search.ef_search)} if search.ef_search else {}
    if query.high_mark is not None and query.high_mark <= (search.ef_search or DEFAULT_EF_SEARCH):
        index = ef_search
    else:
        index = {**ITERATIVE, **ef_search}
    return SearchPlan(probe=probe, few=EXACT, many=index, limit=conf.EXACT_SEARCH_MAX_ROWS)


def rank(query: Any, field: Any, distance: Any, *, exclude_pk: Any = None, min_similarity: float | None = None) -> None:
    """Make ``query`` (a clone, changed in place) a search on ``field``: its searchable rows
    (but ``exclude_pk``), annotated with ``distance`` and ``similarity`` (1 - distance), at
    least ``min_similarity`` similar, the vector deferred, in :data:`SEARCH_ORDER`.

    Built in place rather than with chained ``filter()``/``annotate()``, each of which
    would copy the whole query again: this runs on every search.
    """
    conditions = field.searchable()
    if exclude_pk is not None:
        conditions &= ~Q(pk=exclude_pk)
    query.add_q(conditions)
    query.add_annotation(distance, "distance")
    query.add_annotation(ExpressionWrapper(Value(1.0) - F("distance"), output_field=FloatField()), "similarity")
    if min_similarity is not None:
        query.add_q(Q(distance__lte=1.0 - min_similarity))
    # The stored vectors are large and rarely wanted in results: load them on access.
    query.add_deferred_loading([field.attname])
    query.clear_ordering(force=True)
    query.add_ordering(*SEARCH_ORDER)


def carries_distance(queryset: models.QuerySet) -> bool:
    """Whether the rows come back as model instances or dicts holding ``distance``, in
    ``similar_to()``'s order, so that :func:`resort` can put them nearest first.

    For those a broad filter uses pgvector's relaxed order: the iterative scan returns
    its candidates as it finds them, a little out of order, and reaches the same recall
    with half the search list of a strict order, in about a third of the time
    (docs/benchmarks.md). Other shapes (``values_list()``, a caller's own ordering) keep
    the strict order.
    """
    query = queryset.query
    return (
        queryset._iterable_class in (ModelIterable, ValuesIterable)
        and "distance" in query.annotation_select
        and tuple(query.order_by) == SEARCH_ORDER
        and query.standard_ordering
        and not query.combinator
    )


def resort(rows: list[Any]) -> None:
    """Sort fetched rows (model instances or dicts) in :data:`SEARCH_ORDER`, in place.

    Dicts without ``pk`` are sorted by distance alone; the sort is stable, so tied rows
    keep the order the server gave them. A row without a distance (OR-ed into the
    search: ``search | qs``, no vector yet) comes last, where PostgreSQL puts NULL.
    """
    if not rows:
        return
    if not isinstance(rows[0], dict):
        rows.sort(key=lambda row: (*nulls_last(row.distance), row.pk))
    elif "pk" in rows[0]:
        rows.sort(key=lambda row: (*nulls_last(row["distance"]), row["pk"]))
    else:
        rows.sort(key=lambda row: nulls_last(row["distance"]))


def nulls_last(distance: float | None) -> tuple[bool, float]:
    return (distance is None, 0.0 if distance is None else distance)


def callers_filters(queryset: models.QuerySet, search: SemanticSearch) -> tuple[str, Any]:
    """``SELECT pk FROM ... WHERE`` the caller's filters only.

    similar_to()'s own conditions are left out: the planner has no statistics for
    ``vector_dims(...) = n`` and would guess it keeps 0.5% of the rows.
    """
    probe = queryset.query.clone()
    children = probe.where.children
    probe.where.children = children[: search.first_own] + children[search.first_own + search.own_filters :]
    probe.clear_ordering(force=True)
    probe.clear_limits()
    probe.clear_select_clause()
    probe.add_fields(["pk"])
    probe.set_annotation_mask(())
    return probe.get_compiler(queryset.db).as_sql()


@contextmanager
def search_statement(using: str, search_plan: SearchPlan | None) -> Iterator[None]:
    """Send ``search_plan``'s settings with the next statement run on ``using``, and
    leave the settings as they were after it."""
    if search_plan is None:
        yield
        return
    connection = connections[using]
    if connection.vendor != "postgresql":
        raise NotSupportedError(NOT_POSTGRESQL.format(alias=using, vendor=connection.display_name))
    restore = not connection.get_autocommit()
    if not connection.features.uses_server_side_binding:
        with connection.execute_wrapper(SearchStatement(search_plan, restore=restore, together=True)):
            yield
        return
    # Settings sent apart from the query need a transaction to hold them until it runs.
    with (
        transaction.atomic(using=using, savepoint=False),
        connection.execute_wrapper(SearchStatement(search_plan, restore=restore, together=False)),
    ):
        yield


class SearchStatement:
    """A Django execute wrapper that surrounds the first statement it sees with the settings."""

    def __init__(self, search_plan: SearchPlan, *, restore: bool, together: bool) -> None:
        self.plan = search_plan
        self.restore = restore
        self.together = together
        self.sent = False

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if self.sent or sql.lstrip()[:4].upper() == "SET ":
            # Not the search: a setting the backend sends as it opens the search's cursor, through
            # Django's cursor wrapper (django-tenants' search_path, pointing at the tenant's schema).
            # Taken for the search, the probe ran before it, in the schema before: another tenant's.
            return execute(sql, params, many, context)
        self.sent = True
        raw = context["connection"].connection
        before, after = statements(self.plan, raw, restore=self.restore)
        if not self.together:
            with raw.cursor() as cursor:
                for statement, values in before:
                    cursor.execute(statement, values)
                result = execute(sql, params, many, context)
                for statement, values in after:
                    cursor.execute(statement, values)
            return result
        if params is None:  # the query was sent as is; merging parameters now reads % as a placeholder
            sql, params = sql.replace("%", "%%"), ()
        around = [*before, (sql, list(params)), *after]
        text = "; ".join(statement for statement, _ in around)
        result = execute(text, [value for _, values in around for value in values], many, context)
        for _ in before:
            context["cursor"].cursor.nextset()
        return result


Statement = tuple[str, list[Any]]


def statements(search_plan: SearchPlan, raw: Any, *, restore: bool) -> tuple[list[Statement], list[Statement]]:
    """The statements to run before and after the search statement, with their parameters.

    All but the probe are the same for every search with the same settings, so they
    are built once.
    """
    before: list[Statement] = []
    after: list[Statement] = []
    if restore:
        save, put_back = restoring(tuple(search_plan.names()))
        before.append((save, []))
        after.append((put_back, []))
    if search_plan.settings:
        before.append((f"SELECT {set_calls(tuple(search_plan.settings.items()))}", []))
    if search_plan.probe is not None:
        with psycopg.ClientCursor(raw) as cursor:
            probe = cursor.mogrify(*search_plan.probe)
        before.append(("SELECT set_config('semantic.probe', %s, true)", [probe]))
        few, many = tuple(search_plan.few.items()), tuple(search_plan.many.items())
        before.append((estimate_and_choose(search_plan.limit, few, many), []))
    return before, after


@functools.cache
def estimate_and_choose(limit: int, few: tuple[tuple[str, str], ...], many: tuple[tuple[str, str], ...]) -> str:
    return ESTIMATE_AND_CHOOSE.format(limit=int(limit), few=perform(few), many=perform(many))


def perform(settings: tuple[tuple[str, str], ...]) -> str:
    """A PL/pgSQL statement setting ``settings``: none is ``NULL;``, its no-op."""
    return f"PERFORM {set_calls(settings)};" if settings else "NULL;"


@functools.cache
def restoring(names: tuple[str, ...]) -> tuple[str, str]:
    """Statements that keep the current values of ``names`` and put them back."""
    save = ", ".join(
        f"set_config({literal(saved(n))}, coalesce(current_setting({literal(n)}, true), ''), true)" for n in names
    )
    put_back = ", ".join(
        f"set_config({literal(n)}, nullif(current_setting({literal(saved(n))}), ''), true)" for n in names
    )
    return f"SELECT {save}", f"SELECT {put_back}"


@functools.cache
def set_calls(settings: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"set_config({literal(name)}, {literal(value)}, true)" for name, value in settings)


def literal(text: str) -> str:
    """A setting's name or value as SQL: these come from this module and ``ef_search`` (an
    integer), never from a request; a % is doubled for the client-side merge."""
    return "'" + text.replace("'", "''").replace("%", "%%") + "'"


def saved(name: str) -> str:
    return SAVED_PREFIX + name.replace(".", "_")
