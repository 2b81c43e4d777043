"""Nearest neighbours and duplicates as QuerySet methods.

``similar_to()`` returns an ordinary lazy queryset annotated with ``distance`` (cosine
distance) and ``similarity`` (1 - distance), nearest first, so it chains with
``filter()``, ``select_related()``, ``values()``, slicing and ``Paginator``. Only rows
that :meth:`EmbeddingField.searchable` admits take part, so a vector made by another
model, task type or size is never compared with the query.

How the search runs is decided when the queryset is evaluated (see
:class:`SemanticCompiler`): without other filters the HNSW index serves it with the
requested ``ef_search``; with filters, a selective filter is answered exactly (the
filtered rows are few, so comparing them all is fast and loses nothing) and a broad
one through pgvector's iterative index scan, turned on for that query only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models, transaction
from django.db.models import F, FloatField, Q, Value
from django.db.models.expressions import ExpressionWrapper
from django.db.models.sql import Query
from django.db.models.sql.compiler import SQLCompiler
from pgvector.django import CosineDistance

from semantic.conf import semantic_settings as conf
from semantic.embed import embed
from semantic.fields import EmbeddingField
from semantic.switch import serving_field

#: Default ``threshold`` of duplicates(); see docs/benchmarks.md for how it was chosen.
DEFAULT_DUPLICATE_THRESHOLD = 0.81

#: Query-side task type for each stored (document-side) task type.
QUERY_TASK_TYPES = {
    "RETRIEVAL_DOCUMENT": "RETRIEVAL_QUERY",
    "CODE_RETRIEVAL_QUERY": "CODE_RETRIEVAL_QUERY",
}
DOCUMENT_QUERY_TASK_TYPES = ("RETRIEVAL_QUERY", "QUESTION_ANSWERING", "FACT_VERIFICATION")


class SemanticSearch:
    """What the compiler needs to know about a ``similar_to()`` queryset."""

    def __init__(self, *, own_filters: int, ef_search: int | None) -> None:
        self.own_filters = own_filters
        self.ef_search = ef_search


class SemanticQuery(Query):
    semantic: SemanticSearch | None = None

    def get_compiler(self, using: str | None = None, connection: Any = None, elide_empty: bool = True) -> Any:
        compiler = super().get_compiler(using, connection, elide_empty)
        if self.semantic is not None and isinstance(compiler, SQLCompiler) and type(compiler).__name__ == "SQLCompiler":
            compiler.__class__ = semantic_compiler(type(compiler))
        return compiler


_compilers: dict[type, type] = {}


def semantic_compiler(base: type) -> type:
    """The database backend's SELECT compiler with :class:`SemanticCompilerMixin` on top."""
    if base not in _compilers:
        _compilers[base] = type("SemanticCompiler", (SemanticCompilerMixin, base), {})
    return _compilers[base]


class SemanticCompilerMixin:
    """Runs a ``similar_to()`` query with the index settings it needs, for that query only."""

    query: SemanticQuery

    def execute_sql(self, result_type: Any = "multi", chunked_fetch: bool = False, chunk_size: int = 100) -> Any:
        search = self.query.semantic
        assert search is not None
        extra_filters = len(self.query.where.children) > search.own_filters
        settings: dict[str, str] = {}
        if extra_filters and self._candidates_at_most(conf.EXACT_SEARCH_MAX_ROWS):
            self.query = self._exact(self.query)
        elif extra_filters:
            settings = {"hnsw.iterative_scan": "strict_order", "hnsw.max_scan_tuples": "200000"}
            settings["hnsw.ef_search"] = str(max(search.ef_search or 0, 200))
        elif search.ef_search:
            settings["hnsw.ef_search"] = str(search.ef_search)
        run = super().execute_sql  # type: ignore[misc]
        if not settings:
            return run(result_type, chunked_fetch=chunked_fetch, chunk_size=chunk_size)
        connection = self.connection  # type: ignore[attr-defined]
        with transaction.atomic(using=self.using, savepoint=False), connection.cursor() as cursor:  # type: ignore[attr-defined]
            previous = {}
            for name, value in settings.items():
                cursor.execute("SELECT current_setting(%s, true), set_config(%s, %s, true)", [name, name, value])
                previous[name] = cursor.fetchone()[0]
            try:
                # Fetch everything before the settings are put back.
                return run(result_type, chunked_fetch=False, chunk_size=chunk_size)
            finally:
                for name, value in previous.items():
                    if value is None:
                        cursor.execute(f"SET LOCAL {name} TO DEFAULT")
                    else:
                        cursor.execute("SELECT set_config(%s, %s, true)", [name, value])

    def _candidates_at_most(self, limit: int) -> bool:
        probe = self.query.clone()
        probe.semantic = None
        probe.clear_ordering(force=True)
        probe.clear_limits()
        probe.set_limits(high=limit + 1)
        probe.clear_select_clause()
        probe.add_fields(["pk"])
        probe.set_annotation_mask(())
        # SELECT COUNT(*) FROM (... LIMIT limit + 1): counted in the database, not fetched.
        return probe.get_count(using=self.using) <= limit  # type: ignore[attr-defined]

    def _exact(self, query: SemanticQuery) -> SemanticQuery:
        """The same query, ordered by an expression the HNSW index cannot serve."""
        exact = query.clone()
        exact.semantic = query.semantic
        exact.order_by = tuple(
            ExpressionWrapper(F("distance") + Value(0.0), output_field=FloatField()).asc()
            if item in ("distance", F("distance").asc())
            else item
            for item in exact.order_by
        )
        return exact


class SemanticQuerySet(models.QuerySet):
    """QuerySet with ``similar_to``, ``duplicates``, ``duplicate_groups`` and ``duplicates_of``."""

    def __init__(self, model: Any = None, query: Any = None, using: Any = None, hints: Any = None) -> None:
        super().__init__(model, query or SemanticQuery(model), using, hints)

    def similar_to(
        self,
        query: str | models.Model | Sequence[float],
        *,
        field: str | None = None,
        min_similarity: float | None = None,
        task_type: str | None = None,
        ef_search: int | None = None,
    ) -> SemanticQuerySet:
        """Rows nearest to ``query``: a text, a model instance (excluded) or a vector.

        Text is embedded with the query-side task type matching the field's
        (``RETRIEVAL_QUERY`` for ``RETRIEVAL_DOCUMENT`` fields; pass ``task_type`` for
        ``QUESTION_ANSWERING`` or ``FACT_VERIFICATION``) and cached.
        """
        embedding_field = serving_field(self.model, field)
        filters_before = len(self.query.where.children)
        vector, exclude_pk = query_vector(self.model, embedding_field, query, task_type=task_type)
        if min_similarity is not None:
            check_threshold(min_similarity, "min_similarity")
        if ef_search is not None and (not isinstance(ef_search, int) or not 1 <= ef_search <= 1000):
            raise ValueError(f"ef_search must be an integer from 1 to 1000, not {ef_search!r}.")
        distance = CosineDistance(embedding_field.indexed_vector(), Value(vector_literal(vector)))
        conditions = embedding_field.searchable()
        if exclude_pk is not None:
            conditions &= ~Q(pk=exclude_pk)
        # One clone, built in place: this runs on every search, and each chained
        # filter()/annotate() would copy the whole query again.
        qs = self._chain()
        query = qs.query
        query.add_q(conditions)
        query.add_annotation(distance, "distance")
        query.add_annotation(ExpressionWrapper(Value(1.0) - F("distance"), output_field=FloatField()), "similarity")
        if min_similarity is not None:
            query.add_q(Q(distance__lte=1.0 - min_similarity))
        # The stored vectors are large and rarely wanted in results: load them on access.
        query.add_deferred_loading([embedding_field.attname])
        query.clear_ordering(force=True)
        query.add_ordering("distance")
        # Filters added before or after this call are the caller's; the rest are ours.
        query.semantic = SemanticSearch(own_filters=len(query.where.children) - filters_before, ef_search=ef_search)
        return qs

    def duplicates_of(
        self,
        query: str | models.Model,
        threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        *,
        field: str | None = None,
    ) -> SemanticQuerySet:
        """Rows at least ``threshold`` similar to a text or instance: "did you mean…?"."""
        check_threshold(threshold, "threshold")
        return self.similar_to(query, field=field, min_similarity=threshold)

    def duplicates(
        self,
        threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        *,
        field: str | None = None,
        neighbours: int = 5,
        ef_search: int = 20,
        workers: int | None = None,
    ) -> list[tuple[models.Model, models.Model, float]]:
        """Pairs ``(a, b, similarity)`` with ``a.pk < b.pk``, most similar first.

        Each row of the queryset probes the index for its ``neighbours`` nearest rows
        of the queryset, so the work grows with the number of rows, not its square.
        Large tables are searched over ``workers`` connections at once (default: one
        per CPU core, or one inside a transaction).
        """
        from semantic.duplicates import find_pairs

        check_threshold(threshold, "threshold")
        embedding_field = serving_field(self.model, field)
        pairs = find_pairs(
            self, embedding_field, threshold, neighbours=neighbours, ef_search=ef_search, workers=workers
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


class SemanticManager(models.Manager.from_queryset(SemanticQuerySet)):  # type: ignore[misc]
    """``objects = SemanticManager()``."""


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
        vector = model._base_manager.filter(pk=query.pk).values_list(field.attname, flat=True).first()
        if vector is None:
            raise ValueError(
                f"{model.__name__} #{query.pk} has no embedding yet; it is added moments after the row is saved."
            )
        return [float(x) for x in vector], query.pk
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
