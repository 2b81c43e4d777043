"""Nearest neighbours and duplicates as QuerySet methods.

``similar_to()`` returns an ordinary lazy queryset annotated with ``distance`` (cosine
distance) and ``similarity`` (1 - distance), nearest first (rows at the same distance,
such as duplicates, by primary key, so pages neither repeat nor skip them), so it
chains with ``filter()``, ``select_related()``, ``values()``, slicing and
``Paginator``. Only rows that :meth:`EmbeddingField.searchable` admits take part, so a
vector made by another model, task type or size is never compared with the query.

The methods live in :class:`SemanticQuerySetMixin`, so a project whose model already
has a QuerySet of its own (or one from another library) combines the two::

    class ArticleQuerySet(SemanticQuerySetMixin, InheritanceQuerySet): ...
    objects = MyManager.from_queryset(ArticleQuerySet)()

How the search runs is decided when the queryset is evaluated, by the mixin and not
by the SQL compiler, so it composes with any ``Query`` or compiler another library
brings: :mod:`semantic.search_plan` sends the index settings a search needs in the
same round trip as its query, and under a filter lets the server choose between an
exact search and pgvector's iterative index scan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import models
from django.db.models import Value
from django.db.models.query import ModelIterable
from pgvector.django import CosineDistance

from semantic.bulk import BulkWritesMixin
from semantic.passage_search import by_passages, require_passages, with_nearest_passage
from semantic.query_vectors import query_vector
from semantic.search_arguments import COMBINED, SLICED, check_threshold, refuse_combined
from semantic.search_plan import SearchPlan, SemanticSearch, plan, rank, resort, search_statement
from semantic.switch import serving_field
from semantic.vectors import vector_literal

if TYPE_CHECKING:
    _QuerySetBase = models.QuerySet
else:
    _QuerySetBase = object

#: Default ``threshold`` of duplicates(); see docs/benchmarks.md for how it was chosen.
DEFAULT_DUPLICATE_THRESHOLD = 0.81

#: Nearest rows each row of duplicates() asks the index for first, and the ef_search of each probe.
DUPLICATE_NEIGHBOURS = 5
DUPLICATE_EF_SEARCH = 20
#: Most duplicates duplicates() looks for per row unless told otherwise.
DEFAULT_MAX_NEIGHBOURS = 200


class SemanticQuerySetMixin(BulkWritesMixin, _QuerySetBase):
    """``similar_to``, ``duplicates``, ``duplicate_groups`` and ``duplicates_of`` for any QuerySet,
    and bulk writes that keep the hash of text from Python current (:mod:`semantic.bulk`).

    Put it first among the bases: ``class QS(SemanticQuerySetMixin, TheirQuerySet)``.
    It leaves the query and its compiler alone; the index settings a search needs are
    applied around the moments the queryset is evaluated (:meth:`_fetch_all`,
    :meth:`iterator`, :meth:`aiterator`).
    """

    _semantic: SemanticSearch | None = None
    #: Index settings every statement of this queryset runs with (see :meth:`with_index_settings`).
    _index_settings: dict[str, str] | None = None
    #: Where a QuerySet whose iterable builds its rows itself keeps the names of the
    #: annotations to copy onto them (:meth:`_name_annotations`): django-model-utils'
    #: ``InheritanceQuerySet`` keeps them in ``_annotated``. Set it on your QuerySet for a
    #: library that names the attribute otherwise; None leaves the queryset alone.
    annotation_names_attribute: str | None = "_annotated"

    def _clone(self) -> Any:
        clone = super()._clone()
        clone._semantic = self._semantic
        clone._index_settings = self._index_settings
        return clone

    def with_index_settings(self, **settings: str) -> Any:
        """The same rows, each statement run with these PostgreSQL settings (sent with it,
        put back after it): for a search that is a subquery of the rows rather than their
        order, such as :func:`semantic.classify.annotate_predictions`' vote, which needs
        pgvector's iterative scan however the queryset is evaluated (rows, ``count()``,
        ``exists()``, pages)."""
        clone = self._chain()
        clone._index_settings = {**(self._index_settings or {}), **settings}
        return clone

    def _search_plan(self) -> SearchPlan | None:
        search_plan = plan(self, self._semantic) if self._semantic is not None else None
        if not self._index_settings:
            return search_plan
        if search_plan is None:
            return SearchPlan(settings=dict(self._index_settings))
        return dataclasses.replace(search_plan, settings={**self._index_settings, **search_plan.settings})

    def _with_settings(self, evaluate: Any, *args: Any, **kwargs: Any) -> Any:
        """``evaluate(*args, **kwargs)``, its statement sent with this queryset's index settings."""
        with search_statement(self.db, self._search_plan() if self._index_settings else None):
            return evaluate(*args, **kwargs)

    def count(self) -> int:
        return self._with_settings(super().count)

    def exists(self) -> bool:
        return self._with_settings(super().exists)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._with_settings(super().aggregate, *args, **kwargs)

    def explain(self, *, format: str | None = None, **options: Any) -> str:
        """The plan of the statement evaluating the queryset runs: with a search's settings.
        Without them, a filtered search showed pgvector's plain index scan (one row of 20)."""
        with search_statement(self.db, self._search_plan()):
            return super().explain(format=format, **options)

    def _name_annotations(self) -> None:
        """Name every annotation of the query in :attr:`annotation_names_attribute`, just before
        rows are read, when an iterable of the queryset's own builds the model instances.

        Such an iterable (model-utils' ``select_subclasses()``) makes each row its child
        class and copies onto it only the annotations its ``annotate()`` listed, each call
        replacing the list. A search adds ``distance``, ``similarity`` and hybrid's
        ``score`` and ranks to the query in place, without a further copy of it, and the
        admin annotates the state and then the similarity: the rows of child classes lost
        them all (AttributeError on ``row.similarity``). The query holds them all.
        """
        name = self.annotation_names_attribute
        iterable = self._iterable_class
        if name and iterable is not ModelIterable and issubclass(iterable, ModelIterable):
            setattr(self, name, list(self.query.annotation_select))

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._name_annotations()
        if (self._semantic is None and not self._index_settings) or self._result_cache is not None:
            super()._fetch_all()
            return
        search_plan = self._search_plan()
        with search_statement(self.db, search_plan), similarity_after_fetch(self) as instances:
            super()._fetch_all()
        if search_plan is not None and search_plan.resort:
            resort(self._result_cache)
        if instances:
            for row in self._result_cache:
                # None for a row OR-ed in (``search | qs``) without a vector, as the SQL would give.
                row.similarity = None if row.distance is None else 1.0 - row.distance

    def iterator(self, chunk_size: int | None = None) -> Iterator[Any]:
        """A search is fetched whole: its index settings last only as long as the
        statement that carries them, and a server-side cursor is read after it."""
        if self._semantic is None and not self._index_settings:
            self._name_annotations()
            return super().iterator(chunk_size)
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError("Chunk size must be strictly positive.")
        clone = self._chain()
        clone._fetch_all()
        return iter(clone._result_cache)

    async def aiterator(self, chunk_size: int = 2000) -> AsyncIterator[Any]:
        if self._semantic is None and not self._index_settings:
            self._name_annotations()
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
        if self.query.is_sliced:
            raise TypeError(SLICED)
        refuse_combined(self, COMBINED.format(method="similar_to"))
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
        qs = self._chain()
        sql = qs.query
        rank(sql, embedding_field, distance, exclude_pk=exclude_pk, min_similarity=min_similarity)
        # Filters added before or after this call are the caller's; the rest are ours.
        qs._semantic = SemanticSearch(
            first_own=filters_before, own_filters=len(sql.where.children) - filters_before, ef_search=ef_search
        )
        return qs

    async def asimilar_to(self, query: str | models.Model | Sequence[float], **options: Any) -> Any:
        """:meth:`similar_to` for async code, run in a thread as Django's ``a``-methods run the
        ORM: a text is embedded (the API called, the rate limit and the cache consulted) and an
        instance's stored vector read when the queryset is made. The lazy queryset it returns
        is read with ``async for`` or ``await qs.afirst()``."""
        return await sync_to_async(self.similar_to)(query, **options)

    async def aduplicates_of(self, query: str | models.Model, *args: Any, **options: Any) -> Any:
        """:meth:`duplicates_of` for async code (see :meth:`asimilar_to`)."""
        return await sync_to_async(self.duplicates_of)(query, *args, **options)

    async def awith_passage(self, query: str | models.Model | Sequence[float], **options: Any) -> Any:
        """:meth:`with_passage` for async code (see :meth:`asimilar_to`)."""
        return await sync_to_async(self.with_passage)(query, **options)

    def with_passage(
        self, query: str | models.Model | Sequence[float], *, field: str | None = None, task_type: str | None = None
    ) -> Any:
        """The same rows in the same order, each annotated with its passage nearest to ``query``.

        For a field with ``passages``: ``passage_text``, ``passage_start``,
        ``passage_end``, ``passage_position`` and ``passage_similarity`` (all None for a
        row without passages). Rank by something else (a keyword search, ``hybrid()``,
        another field's ``similar_to()``) and show the part of each row's long text that
        answers the query. ``query`` and ``task_type`` as for :meth:`similar_to`.
        """
        refuse_combined(self, COMBINED.format(method="with_passage"))
        embedding_field = serving_field(self.model, field)
        require_passages(embedding_field)
        vector, _ = query_vector(self.model, embedding_field, query, task_type=task_type)
        return with_nearest_passage(self, embedding_field, vector)

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
        neighbours: int = DUPLICATE_NEIGHBOURS,
        ef_search: int = DUPLICATE_EF_SEARCH,
        max_neighbours: int | None = DEFAULT_MAX_NEIGHBOURS,
        workers: int | None = None,
    ) -> list[tuple[Any, Any, float]]:
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
        options = {"neighbours": neighbours, "ef_search": ef_search, "max_neighbours": max_neighbours}
        pairs = self.duplicate_keys(threshold, field=field, workers=workers, **options)
        objects = self.model._base_manager.using(self.db).in_bulk({pk for pair in pairs for pk in pair[:2]})
        return [(objects[a], objects[b], similarity) for a, b, similarity in pairs]

    def duplicate_keys(
        self,
        threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        *,
        field: str | None = None,
        neighbours: int = DUPLICATE_NEIGHBOURS,
        ef_search: int = DUPLICATE_EF_SEARCH,
        max_neighbours: int | None = DEFAULT_MAX_NEIGHBOURS,
        workers: int | None = None,
    ) -> list[tuple[Any, Any, float]]:
        """:meth:`duplicates` as primary-key pairs, with no row loaded: for callers that keep
        the pairs of a whole table, or show only some of them."""
        from semantic.duplicates import find_pairs

        check_threshold(threshold, "threshold")
        refuse_combined(self, COMBINED.format(method="duplicates"))
        embedding_field = serving_field(self.model, field)
        options = {"neighbours": neighbours, "ef_search": ef_search, "max_neighbours": max_neighbours}
        return find_pairs(self, embedding_field, threshold, workers=workers, **options)

    def duplicate_groups(
        self,
        threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
        *,
        field: str | None = None,
    ) -> list[list[Any]]:
        """Groups of rows linked by duplicate pairs (connected components), largest first."""
        from semantic.duplicates import connected_groups

        pairs = self.duplicates(threshold, field=field)
        return connected_groups((a, b) for a, b, _ in pairs)


@contextmanager
def similarity_after_fetch(queryset: models.QuerySet) -> Iterator[bool]:
    """Leave ``similarity`` out of the SELECT while model instances are fetched, if
    ``distance`` is in it: True when the caller must set it on each row (1 - distance).

    PostgreSQL computes the select list before it sorts, so a search would compute a
    second distance for every row it compares, not only for the rows it returns. Asked
    for by name (``values("similarity")``, ``filter()``, ``order_by()``) it stays SQL,
    and so it does in a ``union()``: the combined rows are ordered by their columns.
    """
    query = queryset.query
    selected = query.annotation_select
    if (
        queryset._iterable_class is not ModelIterable
        or "similarity" not in selected
        or "distance" not in selected
        or query.combinator
    ):
        yield False
        return
    mask = query.annotation_select_mask
    query.set_annotation_mask([name for name in selected if name != "similarity"])
    try:
        yield True
    finally:
        query.set_annotation_mask(mask)


class SemanticQuerySet(SemanticQuerySetMixin, models.QuerySet):
    """A QuerySet with the semantic methods, for models without a QuerySet of their own."""


if TYPE_CHECKING:

    class SemanticManager(SemanticQuerySet, models.Manager):  # type: ignore[misc]
        """What type checkers read: from_queryset() gives the manager the QuerySet's methods, and a
        base they cannot evaluate would hide them (pyright) or make the manager untyped (mypy)."""

else:

    class SemanticManager(models.Manager.from_queryset(SemanticQuerySet)):
        """``objects = SemanticManager()``."""


def with_semantic_methods(queryset: models.QuerySet) -> Any:
    """``queryset`` with the methods of :class:`SemanticQuerySetMixin`: itself when it has
    them, else a copy whose class adds the mixin, its own class kept as the other base.

    For code that must read a model's rows as its project does, through the default
    manager (a soft delete's, a proxy's own), when that manager is a plain one: its rows,
    filters and methods stay as they are.
    """
    if isinstance(queryset, SemanticQuerySetMixin):
        return queryset
    clone = queryset._chain()
    # A new object rather than ``__class__`` assignment, which CPython refuses when a base
    # has ``__slots__`` (model-utils' InheritanceQuerySet is a typing.Generic): a QuerySet's
    # state is all in its __dict__.
    with_mixin = _with_mixin(type(queryset))
    copy = with_mixin.__new__(with_mixin)
    copy.__dict__.update(clone.__dict__)
    return copy


@functools.cache
def _with_mixin(queryset_class: type[models.QuerySet]) -> type[models.QuerySet]:
    return type(queryset_class.__name__, (SemanticQuerySetMixin, queryset_class), {})
