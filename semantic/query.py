"""Nearest neighbours and duplicates as QuerySet methods.

``similar_to()`` returns an ordinary lazy queryset annotated with ``distance`` (cosine
distance) and ``similarity`` (1 - distance), nearest first, so it chains with
``filter()``, ``select_related()``, ``values()``, slicing and ``Paginator``. Only rows
that :meth:`EmbeddingField.searchable` admits take part, so a vector made by another
model, task type or size is never compared with the query.

The methods live in :class:`SemanticQuerySetMixin`, so a project whose model already
has a QuerySet of its own (or one from another library) combines the two::

    class ArticleQuerySet(SemanticQuerySetMixin, InheritanceQuerySet): ...
    objects = MyManager.from_queryset(ArticleQuerySet)()

How the search runs is decided when the queryset is evaluated, by the mixin and not
by the SQL compiler, so it composes with any ``Query`` or compiler another library
brings: without other filters the HNSW index serves it with pgvector's iterative
scan (deep pages stay full); with filters, a selective filter is answered exactly
(the filtered rows are few, so comparing them all is fast and loses nothing) and a
broad one through the iterative scan with a larger search list. The settings are
set for that query only, inside its own transaction or savepoint, and put back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import connections, models, transaction
from django.db.models import BooleanField, F, FloatField, Q, Value
from django.db.models.expressions import ExpressionWrapper
from pgvector.django import CosineDistance

from semantic.conf import semantic_settings as conf
from semantic.embed import EmptyQuery, embed
from semantic.fields import EmbeddingField
from semantic.passage_search import by_passages
from semantic.switch import serving_field

if TYPE_CHECKING:
    _QuerySetBase = models.QuerySet
else:
    _QuerySetBase = object

#: Default ``threshold`` of duplicates(); see docs/benchmarks.md for how it was chosen.
DEFAULT_DUPLICATE_THRESHOLD = 0.81

#: Most duplicates duplicates() looks for per row unless told otherwise.
DEFAULT_MAX_NEIGHBOURS = 200

#: Query-side task type for each stored (document-side) task type.
QUERY_TASK_TYPES = {
    "RETRIEVAL_DOCUMENT": "RETRIEVAL_QUERY",
    "CODE_RETRIEVAL_QUERY": "CODE_RETRIEVAL_QUERY",
}
DOCUMENT_QUERY_TASK_TYPES = ("RETRIEVAL_QUERY", "QUESTION_ANSWERING", "FACT_VERIFICATION")

#: Index tuples an iterative scan may visit before it gives up (pgvector's default is 20,000).
MAX_SCAN_TUPLES = 200_000
#: pgvector's default ``hnsw.ef_search``: an unfiltered scan returns this many rows without iterating.
DEFAULT_EF_SEARCH = 40
#: Smallest search list for a broadly filtered query, whose first candidates are mostly filtered out.
FILTERED_EF_SEARCH = 200


@dataclass(frozen=True)
class SemanticSearch:
    """What evaluating a ``similar_to()`` queryset needs to know, kept on the queryset."""

    #: How many WHERE conditions similar_to() added; more than these are the caller's filters.
    own_filters: int
    ef_search: int | None


class SemanticQuerySetMixin(_QuerySetBase):
    """``similar_to``, ``duplicates``, ``duplicate_groups`` and ``duplicates_of`` for any QuerySet.

    Put it first among the bases: ``class QS(SemanticQuerySetMixin, TheirQuerySet)``.
    It leaves the query and its compiler alone; the index settings a search needs are
    applied around the moments the queryset is evaluated (:meth:`_fetch_all`,
    :meth:`iterator`, :meth:`aiterator`).
    """

    _semantic: SemanticSearch | None = None

    def _clone(self) -> Any:
        clone = super()._clone()
        clone._semantic = self._semantic
        return clone

    def _fetch_all(self) -> None:
        if self._semantic is None or self._result_cache is not None:
            super()._fetch_all()
            return
        query, settings = plan(self, self._semantic)
        # ``_query``, not the ``query`` setter, which would turn values_list() rows into dicts.
        original, self._query = self._query, query
        try:
            with index_settings(self.db, settings):
                # Fetch everything (and prefetch) before the settings are put back.
                super()._fetch_all()
        finally:
            self._query = original

    def iterator(self, chunk_size: int | None = None) -> Iterator[Any]:
        """A search is fetched whole: a server-side cursor would be read after the
        transaction that holds its index settings has ended."""
        if self._semantic is None:
            return super().iterator(chunk_size)
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError("Chunk size must be strictly positive.")
        clone = self._chain()
        clone._fetch_all()
        return iter(clone._result_cache)

    async def aiterator(self, chunk_size: int = 2000) -> AsyncIterator[Any]:
        if self._semantic is None:
            async for row in super().aiterator(chunk_size):
                yield row
            return
        for row in await sync_to_async(lambda: list(self.iterator(chunk_size)))():
            yield row

    def similar_to(
        self,
        query: str | models.Model | Sequence[float],
        *,
        field: str | None = None,
        min_similarity: float | None = None,
        task_type: str | None = None,
        ef_search: int | None = None,
        passages: bool = False,
    ) -> Any:
        """Rows nearest to ``query``: a text, a model instance (excluded) or a vector.

        With ``passages=True`` (a field with ``passages``), rows are ranked by their
        nearest passage and annotated with it: ``passage_text``, ``passage_start``,
        ``passage_end``, ``passage_position`` (see :mod:`semantic.passage_search`;
        the search is exact, ``ef_search`` does not apply).

        Text is embedded with the query-side task type matching the field's
        (``RETRIEVAL_QUERY`` for ``RETRIEVAL_DOCUMENT`` fields; pass ``task_type`` for
        ``QUESTION_ANSWERING`` or ``FACT_VERIFICATION``) and cached.

        Raises :class:`semantic.EmptyQuery` (a ``ValueError``) for a text with nothing
        to embed, and :class:`semantic.SearchUnavailable` (an ``EmbeddingError``) when
        the text cannot be embedded now: the API failed or the rate limit is reached.
        Views catch these two to show "no query" or "try again later".
        """
        embedding_field = serving_field(self.model, field)
        filters_before = len(self.query.where.children)
        vector, exclude_pk = query_vector(self.model, embedding_field, query, task_type=task_type)
        if min_similarity is not None:
            check_threshold(min_similarity, "min_similarity")
        if ef_search is not None and (not isinstance(ef_search, int) or not 1 <= ef_search <= 1000):
            raise ValueError(f"ef_search must be an integer from 1 to 1000, not {ef_search!r}.")
        if passages:
            qs = self._chain()
            qs._semantic = None  # exact: no index settings to apply when it is evaluated
            return by_passages(qs, embedding_field, vector, exclude_pk=exclude_pk, min_similarity=min_similarity)
        distance = CosineDistance(embedding_field.indexed_vector(), Value(vector_literal(vector)))
        conditions = embedding_field.searchable()
        if exclude_pk is not None:
            conditions &= ~Q(pk=exclude_pk)
        # One clone, built in place: this runs on every search, and each chained
        # filter()/annotate() would copy the whole query again.
        qs = self._chain()
        sql = qs.query
        sql.add_q(conditions)
        sql.add_annotation(distance, "distance")
        sql.add_annotation(ExpressionWrapper(Value(1.0) - F("distance"), output_field=FloatField()), "similarity")
        if min_similarity is not None:
            sql.add_q(Q(distance__lte=1.0 - min_similarity))
        # The stored vectors are large and rarely wanted in results: load them on access.
        sql.add_deferred_loading([embedding_field.attname])
        sql.clear_ordering(force=True)
        sql.add_ordering("distance")
        # Filters added before or after this call are the caller's; the rest are ours.
        qs._semantic = SemanticSearch(own_filters=len(sql.where.children) - filters_before, ef_search=ef_search)
        return qs

    def duplicates_of(
        self,
        query: str | models.Model,
        threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        *,
        field: str | None = None,
    ) -> Any:
        """Rows at least ``threshold`` similar to a text or instance: "did you mean…?".

        Raises the same :class:`semantic.EmptyQuery` and :class:`semantic.SearchUnavailable`
        as :meth:`similar_to`.
        """
        check_threshold(threshold, "threshold")
        return self.similar_to(query, field=field, min_similarity=threshold)

    def duplicates(
        self,
        threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        *,
        field: str | None = None,
        neighbours: int = 5,
        ef_search: int = 20,
        max_neighbours: int | None = DEFAULT_MAX_NEIGHBOURS,
        workers: int | None = None,
    ) -> list[tuple[models.Model, models.Model, float]]:
        """Pairs ``(a, b, similarity)`` with ``a.pk < b.pk``, most similar first.

        Each row of the queryset probes the index for its ``neighbours`` nearest other
        rows, and probes deeper while the farthest of them is still a duplicate, so
        the work grows with the number of rows (not its square) and a row with many
        near-duplicates keeps all its pairs, up to its ``max_neighbours`` nearest
        (``None``: no bound; a threshold that makes every row a duplicate of every
        other then costs the square of the rows). Large tables are searched over
        ``workers`` connections at once (default: one per CPU core, or one inside a
        transaction).
        """
        from semantic.duplicates import find_pairs

        check_threshold(threshold, "threshold")
        embedding_field = serving_field(self.model, field)
        pairs = find_pairs(
            self,
            embedding_field,
            threshold,
            neighbours=neighbours,
            ef_search=ef_search,
            max_neighbours=max_neighbours,
            workers=workers,
        )
        objects = self.model._base_manager.using(self.db).in_bulk({pk for pair in pairs for pk in pair[:2]})
        return [(objects[a], objects[b], similarity) for a, b, similarity in pairs]

    def duplicate_groups(
        self,
        threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        *,
        field: str | None = None,
    ) -> list[list[models.Model]]:
        """Groups of rows linked by duplicate pairs (connected components), largest first."""
        from semantic.duplicates import connected_groups

        pairs = self.duplicates(threshold, field=field)
        return connected_groups((a, b) for a, b, _ in pairs)


class SemanticQuerySet(SemanticQuerySetMixin, models.QuerySet):
    """A QuerySet with the semantic methods, for models without a QuerySet of their own."""


class SemanticManager(models.Manager.from_queryset(SemanticQuerySet)):  # type: ignore[misc]
    """``objects = SemanticManager()``."""


def plan(queryset: models.QuerySet, search: SemanticSearch) -> tuple[Any, dict[str, str]]:
    """The query to run for a search, and the index settings to run it with.

    A filter the caller added makes the HNSW scan return rows that the filter then
    drops. When few rows pass it, comparing them all (an order the index cannot
    serve) is exact and quick; when many do, the iterative scan keeps looking until
    the slice is full. An unfiltered search needs the iterative scan only when it
    asks for more rows than the scan's list holds (``ef_search``): pages past the
    first few, or no slice at all. Shallow ones run with no settings, so the common
    search costs no extra round trip.
    """
    query = queryset.query
    iterative = {"hnsw.iterative_scan": "strict_order", "hnsw.max_scan_tuples": str(MAX_SCAN_TUPLES)}
    if len(query.where.children) > search.own_filters:
        if candidates_at_most(query, queryset.db, conf.EXACT_SEARCH_MAX_ROWS):
            return exact(query), {}
        return query, {**iterative, "hnsw.ef_search": str(max(search.ef_search or 0, FILTERED_EF_SEARCH))}
    ef_search = {"hnsw.ef_search": str(search.ef_search)} if search.ef_search else {}
    if query.high_mark is not None and query.high_mark <= (search.ef_search or DEFAULT_EF_SEARCH):
        return query, ef_search
    return query, {**iterative, **ef_search}


def candidates_at_most(query: Any, using: str, limit: int) -> bool:
    probe = query.clone()
    probe.clear_ordering(force=True)
    probe.clear_limits()
    probe.set_limits(high=limit + 1)
    probe.clear_select_clause()
    probe.add_fields(["pk"])
    probe.set_annotation_mask(())
    # SELECT COUNT(*) FROM (... LIMIT limit + 1): counted in the database, not fetched.
    return probe.get_count(using=using) <= limit


def exact(query: Any) -> Any:
    """The same query, ordered by an expression the HNSW index cannot serve."""
    ordered = query.clone()
    ordered.order_by = tuple(
        ExpressionWrapper(F("distance") + Value(0.0), output_field=FloatField()).asc()
        if item in ("distance", F("distance").asc())
        else item
        for item in ordered.order_by
    )
    return ordered


@contextmanager
def index_settings(using: str, settings: dict[str, str]) -> Iterator[None]:
    """Run the block with ``settings`` set for this transaction, and put them back after.

    ``set_config(..., true)`` lasts until the transaction ends: in autocommit the
    atomic block below is that transaction, and its end is the reset; inside the
    caller's own transaction the previous values are restored, so the rest of it
    runs as before.
    """
    if not settings:
        yield
        return
    names = list(settings)
    connection = connections[using]
    restore = connection.in_atomic_block
    with transaction.atomic(using=using, savepoint=False), connection.cursor() as cursor:
        reads = ", ".join(["current_setting(%s, true)"] * len(names))
        writes = ", ".join(["set_config(%s, %s, true)"] * len(names))
        cursor.execute(f"SELECT {reads}, {writes}", [*names, *(x for n in names for x in (n, settings[n]))])
        previous = dict(zip(names, cursor.fetchone()[: len(names)]))
        try:
            yield
        finally:
            if restore:
                put_back(cursor, previous)


def put_back(cursor: Any, previous: dict[str, str | None]) -> None:
    known = [(name, value) for name, value in previous.items() if value is not None]
    if known:
        cursor.execute(
            "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(known)), [x for pair in known for x in pair]
        )
    for name, value in previous.items():
        if value is None:
            cursor.execute(f"SET LOCAL {name} TO DEFAULT")


def query_vector(
    model: type[models.Model],
    field: EmbeddingField,
    query: Any,
    *,
    task_type: str | None = None,
) -> tuple[list[float], Any]:
    """The vector to search with, and the primary key to leave out (for an instance)."""
    if isinstance(query, models.Model):
        if not isinstance(query, model):
            raise TypeError(f"similar_to() got a {type(query).__name__}; this queryset holds {model.__name__}.")
        return instance_vector(model, field, query), query.pk
    if isinstance(query, str):
        (vector,) = embed(
            [query],
            task_type=query_task_type(field, task_type),
            dimensions=field.dimensions,
            model=field.embedding_model,
        )
        return vector, None
    if isinstance(query, Iterable):
        vector = [float(x) for x in query]
        if len(vector) != field.dimensions:
            raise ValueError(
                f"The query vector has {len(vector)} dimensions; {model._meta.label}.{field.name} "
                f"stores {field.dimensions}."
            )
        return vector, None
    raise TypeError(f"similar_to() takes a text, a {model.__name__} or a vector, not {type(query).__name__}.")


def instance_vector(model: type[models.Model], field: EmbeddingField, instance: models.Model) -> list[float]:
    """The instance's stored vector if it is current, else a vector of its text made now.

    A stored vector made by another model, task type or size cannot be compared with
    the others, and one made from an older text (the row is pending, or the instance
    was changed in memory) describes a text the instance no longer has. Such a
    vector is never used: the instance's current text is embedded (document-side
    task type, as the stored vectors were, without a title), through the cache and
    the rate limit, and may raise :class:`semantic.SearchUnavailable`.
    """
    columns = (field.attname, field.spec_name, "_pending", field.embedded_hash_name)
    pending = ExpressionWrapper(field.pending(), BooleanField())
    rows = model._base_manager.filter(pk=instance.pk).annotate(_pending=pending)
    row = rows.values_list(*columns).first() if instance.pk else None
    if row is not None:
        vector, spec, pending, embedded_hash = row
        if vector is not None and spec == field.spec() and not pending and embedded_hash == field.text_hash(instance):
            return [float(x) for x in vector]
    text = field.source_text(instance)
    if not text.strip():
        raise EmptyQuery(f"{model.__name__} #{instance.pk} has no text to search with.")
    (vector,) = embed([text], task_type=field.task_type, dimensions=field.dimensions, model=field.embedding_model)
    return vector


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, with the nine significant digits that round-trip a float32.

    pgvector stores float32 (``vector``) or float16 (``halfvec``), so more digits carry
    nothing; one ``%`` over the whole vector is three times faster than ``str()`` per
    element and makes a third less text to send and parse (docs/benchmarks.md).
    """
    return "[" + ",".join(["%.9g"] * len(vector)) % tuple(vector) + "]"


def query_task_type(field: EmbeddingField, requested: str | None = None) -> str:
    if requested is None:
        return QUERY_TASK_TYPES.get(field.task_type, field.task_type)
    if field.task_type == "RETRIEVAL_DOCUMENT" and requested in DOCUMENT_QUERY_TASK_TYPES:
        return requested
    if requested == QUERY_TASK_TYPES.get(field.task_type, field.task_type):
        return requested
    raise ValueError(f"task_type {requested!r} does not search a {field.task_type} field.")


def check_threshold(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} is a cosine similarity from -1 to 1, not {value!r}.")
