"""Keyword and meaning search in one ranking, fused by reciprocal rank fusion (RRF).

Each side ranks its own ``candidates`` best rows: meaning by ``similar_to()``,
keywords by full-text search (:mod:`semantic.keyword`). A row's score is
``sum(weight / (k + rank))`` over the sides that found it, so a row near the top of
either list rises, and one found by both rises most. ``k`` flattens the difference
between the first ranks; ``weights`` (keyword, meaning) tilt the balance. The default
``k`` is 10: on SciFact's 809 training claims it scored best for every pair of weights
tried, nDCG@10 69.95 with equal weights against 68.11 for 60, the value of Cormack,
Clarke and Büttcher's RRF paper (docs/benchmarks.md; ``semantic_evaluate`` checks it on
your own judgements).

The result is a lazy queryset of the model, annotated with ``score``, ``keyword_rank``
and ``meaning_rank`` (None for a side that did not find the row), best first, and only
those rows: at most twice ``candidates`` (100 by default; up to 1,000, as many as the
meaning side's HNSW search returns), however many match, since the fused rows are
written into the statement. ``reverse()`` turns the fused order around; the sides still
rank best first. With ``passages=True`` (a field with ``passages``) the meaning side
ranks rows by their nearest passage, as ``similar_to(passages=True)`` does, and each row
is annotated with that passage (``passage_text``, ``passage_start``, ``passage_end``,
``passage_position``). The two sides are searched when the queryset is evaluated, with
every filter it has by then, before or after ``hybrid()``: a filtered search ranks the
filtered rows, as ``similar_to()`` does; a filter on ``score`` or a rank (or a window
ordered by them, as Django's top-N ``Prefetch``) keeps fused rows instead, the sides
rank without it. Evaluating runs three statements: each side's candidates, then the
rows, restricted to the fused candidates and ordered by score. docs/benchmarks.md
compares this with one statement joining two ranked subqueries. In a ``union()`` each
combined search is compiled as a statement of its own and so searches with its own
filters; a union is not searched again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import NotSupportedError, models
from django.db.models import F
from django.db.models.expressions import Expression
from django.db.models.sql.where import AND
from django.utils.functional import Promise

from semantic.expressions import once_per_statement
from semantic.keyword import keyword_search, keyword_settings
from semantic.passage_search import NearestPassage, OuterRow, passage_annotations, require_passages
from semantic.query import SemanticQuerySet, SemanticQuerySetMixin
from semantic.query_vectors import query_vector
from semantic.search_arguments import SLICED, refuse_combined
from semantic.switch import serving_field
from semantic.vectors import EmptyQuery, blank, vector_literal

#: RRF's ``k``: the rank offset that keeps the first few ranks from dominating.
DEFAULT_K = 10
#: How many rows each side keeps for fusion: the most a search returns is twice this.
DEFAULT_CANDIDATES = 100
PARTS = {"score": models.FloatField, "keyword_rank": models.IntegerField, "meaning_rank": models.IntegerField}


class Fused:
    """Each candidate's score and ranks, keyed by primary key."""

    def __init__(self, keyword: Sequence[Any], meaning: Sequence[Any], *, k: float, weights: Sequence[float]):
        self.rows: dict[Any, dict[str, Any]] = {}
        for name, weight, ranked in (("keyword_rank", weights[0], keyword), ("meaning_rank", weights[1], meaning)):
            # A join across a ManyToMany repeats a row once per related row: it ranks once, first.
            for rank, pk in enumerate(dict.fromkeys(ranked), start=1):
                row = self.rows.setdefault(pk, {"score": 0.0, "keyword_rank": None, "meaning_rank": None})
                row["score"] += weight / (k + rank)
                row[name] = rank


NOT_SEMANTIC = (
    "hybrid() searches a queryset with SemanticQuerySetMixin: give the model `objects = SemanticManager()`, "
    "or put SemanticQuerySetMixin first among the bases of its own QuerySet."
)

COMBINED = (
    "hybrid() searches the rows of one queryset, not a union() (nor intersection() or difference()): "
    "search each queryset and combine the searches, hybrid(a, text).union(hybrid(b, text)).order_by('-score')."
)

OUTER_REF = (
    "hybrid() cannot depend on an outer query (OuterRef): each side is searched by a statement of its own, "
    "where the outer row does not exist. Rank per outer row with similar_to() in the Subquery, "
    "or call hybrid() once per outer row."
)


class HybridSearch:
    """One ``hybrid()`` call: the query, both sides' settings, and the fusion."""

    def __init__(
        self,
        *,
        queryset_class: type[SemanticQuerySet],
        field: str,
        vector: list[float],
        text: str,
        keyword_fields: tuple[str, ...],
        config: str,
        match: str,
        k: float,
        weights: tuple[float, float],
        candidates: int,
        passages: bool = False,
    ) -> None:
        self.queryset_class = queryset_class
        self.field = field
        self.vector = vector
        self.text = text
        self.keyword_fields = keyword_fields
        self.config = config
        self.match = match
        self.k = k
        self.weights = weights
        self.candidates = candidates
        self.passages = passages

    def sides(self, base: SemanticQuerySet) -> tuple[models.QuerySet | None, models.QuerySet | None]:
        """The keyword and meaning querysets of ``base``'s rows, each its candidates, best
        first: keys for keywords, ``{"pk", "distance"}`` for meaning (with the distance a
        broadly filtered search can use the faster relaxed order: ``search_plan``).

        A side with weight 0 is not searched (None).
        """
        keyword = meaning = None
        if self.weights[0]:
            keyword = keyword_search(
                base, self.text, fields=self.keyword_fields, config=self.config, match=self.match
            ).values_list("pk", flat=True)[: self.candidates]
        if self.weights[1]:
            if self.passages:
                nearest = base.similar_to(self.vector, field=self.field, passages=True)
            else:
                # HNSW returns at most ef_search rows: ask for as many as the candidates.
                ef_search = min(max(self.candidates, 40), 1000)
                nearest = base.similar_to(self.vector, field=self.field, ef_search=ef_search)
            meaning = nearest.values("pk", "distance")[: self.candidates]
        return keyword, meaning

    def fuse(self, compiler: Any) -> Fused:
        """Search both sides once per compiled statement, with the statement's filters."""
        return once_per_statement(compiler, self, lambda: self.fused(compiler))

    def fused(self, compiler: Any) -> Fused:
        keyword, meaning = self.sides(self.base(compiler))
        return Fused(
            list(keyword) if keyword is not None else [],
            [row["pk"] for row in meaning] if meaning is not None else [],
            k=self.k,
            weights=self.weights,
        )

    def base(self, compiler: Any) -> SemanticQuerySet:
        """The statement's rows and filters, without the fusion's own parts, order or slice."""
        if any(True for _ in compiler.query.get_external_cols()):
            raise NotSupportedError(OUTER_REF)
        query = compiler.query.clone()
        # A filter on the score or a rank (or a window ordered by them, as in a top-N
        # prefetch) applies to the fused rows: compiled in a side, it would fuse again.
        query.where.children = [child for child in query.where.children if not fused_from(child)]
        query.annotations = {
            name: annotation
            for name, annotation in query.annotations.items()
            if not fused_from(annotation)
            and not isinstance(annotation, NearestPassage)
            and not annotation.contains_aggregate
        }
        query.set_annotation_mask(None)
        # Django's clone shares this dict and annotate() adds to it: a side's annotation
        # would become a column of the caller's values() query, missing from its annotations.
        query.selected = None if query.selected is None else dict(query.selected)
        query.clear_ordering(force=True)
        # After reverse() (and so in last()) each side still ranks best first: the fused
        # order is what reverse() turns around.
        query.standard_ordering = True
        query.clear_limits()
        query.semantic = None
        query.explain_info = None  # explain() of the fused statement: the sides themselves run
        return self.queryset_class(model=query.model, query=query, using=compiler.using)


def fused_from(expression: Any) -> bool:
    """Whether ``expression`` (a filter or an annotation) holds a part of a fused search."""
    if isinstance(expression, HybridPart):
        return True
    parts = getattr(expression, "get_source_expressions", list)()  # ExtraWhere has none
    return any(fused_from(part) for part in parts if part is not None)


class HybridPart(Expression):
    """SQL for one part of a fused search: the candidate filter, the score or a rank.

    The values are known only when the statement is compiled (they depend on its
    filters), so they are written into the SQL then: ``pk IN (...)`` and
    ``CASE pk WHEN ... THEN ... END``.
    """

    def __init__(self, search: HybridSearch, part: str, pk: Any = None) -> None:
        self.search = search
        self.part = part
        self.pk = pk if pk is not None else F("pk")
        output = models.BooleanField() if part == "filter" else PARTS[part]()
        super().__init__(output_field=output)

    @property
    def conditional(self) -> bool:  # type: ignore[override]
        return self.part == "filter"

    def get_source_expressions(self) -> list[Any]:
        return [self.pk]

    def set_source_expressions(self, expressions: list[Any]) -> None:
        (self.pk,) = expressions

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        cast = "double precision" if self.part == "score" else "integer"
        if compiler.query.combinator:
            # The select list of union() (intersection(), difference()) only names the
            # columns: each combined query is compiled on its own, and searches then with
            # its own filters. Searching here would filter the combined query.
            return ("TRUE" if self.part == "filter" else f"NULL::{cast}"), []
        rows = self.search.fuse(compiler).rows
        pk_sql, pk_params = compiler.compile(self.pk)
        if self.part == "filter":
            if not rows:
                return "FALSE", []
            return f"{pk_sql} IN ({', '.join(['%s'] * len(rows))})", [*pk_params, *rows]
        values = [(pk, row[self.part]) for pk, row in rows.items() if row[self.part] is not None]
        if not values:
            return f"NULL::{cast}", []
        whens = " ".join([f"WHEN %s THEN %s::{cast}"] * len(values))
        return f"CASE {pk_sql} {whens} END", [*pk_params, *(value for pair in values for value in pair)]


def hybrid(
    queryset: models.QuerySet[Any] | models.Manager[Any],
    text: str,
    *,
    field: str | None = None,
    keyword_fields: Sequence[str] | None = None,
    config: str | None = None,
    k: float = DEFAULT_K,
    weights: tuple[float, float] = (1.0, 1.0),
    candidates: int = DEFAULT_CANDIDATES,
    match: str = "any",
    passages: bool = False,
) -> Any:
    """Rows of ``queryset`` (or a manager's) ranked by keywords and meaning together (see the module docstring).

    ``field`` is the EmbeddingField (needed when the model has several);
    ``keyword_fields`` and ``config`` default to the model's KeywordIndex;
    ``weights`` is ``(keyword, meaning)``; ``candidates`` is how many rows each side
    keeps (default 100, at most 1,000), so at most twice that many rows are returned
    and counted, however many match;
    ``passages=True`` ranks the meaning side by the rows' passages.
    Raises :class:`semantic.EmptyQuery` (a ``ValueError``) for a text with nothing to
    search, and :class:`semantic.SearchUnavailable` as ``similar_to()`` does.
    """
    if isinstance(queryset, models.Manager):  # Doc.objects, shelf.docs: as similar_to() is called on them
        queryset = queryset.all()
    if not isinstance(queryset, SemanticQuerySetMixin):
        raise TypeError(NOT_SEMANTIC)
    if queryset.query.is_sliced:
        raise TypeError(SLICED)
    refuse_combined(queryset, COMBINED)  # its own filters would not be compiled, nor searched
    if isinstance(text, Promise):  # gettext_lazy(): text, as similar_to() takes it
        text = str(text)
    if not isinstance(text, str):
        raise TypeError(f"hybrid() searches for a text, not {type(text).__name__}.")
    if blank(text):
        raise EmptyQuery(EmptyQuery.SEARCH_MESSAGE)
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k < 0:
        raise ValueError(f"k is a rank offset of 0 or more (default {DEFAULT_K}), not {k!r}.")
    if (
        not isinstance(weights, (tuple, list))
        or len(weights) != 2
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
        or not any(weights)
    ):
        raise ValueError(f"weights is (keyword, meaning): two numbers of 0 or more, not both 0; not {weights!r}.")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= 1000:
        raise ValueError(f"candidates is an integer from 1 to 1000, not {candidates!r}.")
    model = queryset.model
    embedding_field = serving_field(model, field)
    if passages:
        require_passages(embedding_field)
    fields, config = keyword_settings(model, keyword_fields, config)
    vector, _ = query_vector(model, embedding_field, text) if weights[1] else ([], None)
    search = HybridSearch(
        queryset_class=type(queryset),
        field=embedding_field.name,
        vector=vector,
        text=text,
        keyword_fields=fields,
        config=config,
        match=match,
        k=float(k),
        weights=(float(weights[0]), float(weights[1])),
        candidates=candidates,
        passages=passages,
    )
    qs = queryset._chain()
    query = qs.query
    query.semantic = None
    query.where.add(HybridPart(search, "filter").resolve_expression(query), AND)
    for name in PARTS:
        query.add_annotation(HybridPart(search, name), name)
    if passages and weights[1]:
        # The nearest passage of each row returned; a row only the keyword side found has one too.
        for name, annotation in passage_annotations(OuterRow(query, embedding_field), vector_literal(vector)).items():
            query.add_annotation(annotation, name)
    query.clear_ordering(force=True)
    query.add_ordering("-score", "pk")
    return qs


async def ahybrid(queryset: models.QuerySet[Any] | models.Manager[Any], text: str, **options: Any) -> Any:
    """:func:`hybrid` for async code: the text is embedded in a thread (see
    ``SemanticQuerySetMixin.asimilar_to``); read the result with ``async for``."""
    return await sync_to_async(hybrid)(queryset, text, **options)


class HybridSearchMixin:
    """Adds ``hybrid_search()`` to a QuerySet of your own with :class:`SemanticQuerySetMixin`."""

    if TYPE_CHECKING:
        model: type[models.Model]

    def hybrid_search(self, text: str, **options: Any) -> Any:
        """``hybrid(self, text, **options)``."""
        return hybrid(self, text, **options)  # type: ignore[arg-type]


class HybridQuerySet(HybridSearchMixin, SemanticQuerySet):
    """SemanticQuerySet with ``hybrid_search()``; ``objects = HybridQuerySet.as_manager()``."""
