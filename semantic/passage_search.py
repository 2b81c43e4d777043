"""Rows ranked by their best passage: ``similar_to(query, passages=True)``.

Each row's distance is the smallest cosine distance of its passages to the query,
so an article is found by its tenth paragraph as well as by its first. The rows
come back annotated like ``similar_to()``'s (``distance``, ``similarity``) and with
the passage that matched: ``passage_text``, ``passage_start`` and ``passage_end``
(character offsets in the row's text) and ``passage_position``.

The rows searched are those ``similar_to()`` searches: rows holding a vector of the
current model and size. A row whose passages are not stored yet (its text was just
saved and the worker has embedded the row but not yet its passages, or the API refused
a passage) ranks by its own vector, which reads the start of its text, with its
``passage_*`` columns None: it is found as soon as it would be without passages, and
no search pays a second per-row lookup (an ``EXISTS`` beside the nearest passage) to
leave it out. A row whose passages are partly stored (a long text whose run stopped
midway, :data:`semantic.passage_rows.PARTIAL`) ranks by those stored, each cut from
its current text.

Only passages cut from the text the row's vector was made of, by the current sizes and
rules, are compared; a row whose passages were cut by other sizes or rules ranks by its own
vector until they are cut again. A row edited since its vector was made ranks by them, as
its vector ranks it in ``similar_to()``, until the worker embeds it again, but shows none of
them (its passage columns are None): they quote text the editor may have removed, at offsets
into a text it no longer holds.

``with_passage(query)`` annotates the rows of any queryset with their nearest
passage (and its ``passage_similarity``) without ranking or filtering them: a
keyword or hybrid search over the rows' other text shows the part of a long text
that answers the query.

The search is exact: every passage of the rows the queryset admits is compared
with the query. The passage table holds the vectors of every field with
``passages``, of any size, so no HNSW index can be built on it (pgvector indexes one
declared size). Comparing only the admitted rows' passages keeps full recall under
any filter, and costs in proportion to those passages: a filter that narrows the rows
narrows the work. Each row's passages are found through the table's unique index on
(model, field, row, position).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import models
from django.db.models import BooleanField, F, FloatField
from django.db.models.expressions import Expression, ExpressionWrapper, Value
from django.db.models.functions import Coalesce
from pgvector.django import CosineDistance

from semantic.expressions import once_per_statement
from semantic.fields import EmbeddingField
from semantic.search_plan import rank
from semantic.vectors import vector_literal

#: What a passage search annotates, beside ``distance`` and ``similarity``.
PASSAGE_ANNOTATIONS = {
    "passage_text": "text",
    "passage_start": "start",
    "passage_end": "end",
    "passage_position": "position",
}


def searchable_key(field: EmbeddingField) -> dict[str, str]:
    """The passage columns and values that pick ``field``'s passages made by the current
    model, task type and size: the only ones compared."""
    return {"model_label": field.model._meta.label, "field_name": field.name, "spec": field.spec()}


def searchable_passages(field: EmbeddingField) -> models.QuerySet:
    """Passages of ``field`` made by the current model, task type and size: the only ones compared."""
    # Imported here: this module is imported with the package, before the app's models may be.
    from semantic.models import Passage

    return Passage.objects.filter(**searchable_key(field))


def rows_to_quote(
    model: type[models.Model], field: EmbeddingField, keys: set[str], using: str
) -> dict[str, tuple[models.Model, set[str]]]:
    """The rows of ``keys`` (passages' ``object_pk``), each with the ``cut_from`` markers of the
    passages it may be quoted by: those cut from the text its vector was made of, none for a
    row edited since (they quote text it may no longer hold). Asked of these rows alone: the
    test hashes each row's text."""
    from semantic.passage_rows import cut_marker

    edited = ExpressionWrapper(field.pending(), output_field=BooleanField())
    objects = model._base_manager.using(using).annotate(_semantic_edited=edited).in_bulk(keys)
    quotable = {}
    for pk, row in objects.items():
        embedded = getattr(row, field.embedded_hash_name)
        markers = (
            set()
            if row._semantic_edited or embedded is None
            else {
                cut_marker(field, embedded),
                cut_marker(field, embedded, partial=True),
            }
        )
        quotable[str(pk)] = (row, markers)
    return quotable


def require_passages(field: EmbeddingField, to: str = "search") -> None:
    """Refuse a field without ``passages``: there is nothing ``to`` search (or quote)."""
    if not field.passages:
        label = f"{field.model._meta.label}.{field.name}"
        raise ValueError(f"{label} has no passages to {to}; set passages=True on the field.")


def passage_distance(vector: Sequence[float]) -> CosineDistance:
    return CosineDistance(F("vector"), Value(vector_literal(vector)))


class OuterRow:
    """The outer row's key, its embedded text hash and whether it is unedited since: what each
    :class:`NearestPassage` of one search compares its passages with.

    Resolved here once per search and compiled once per statement (:func:`compiled_once`), for
    the six subqueries of a passage search: built and compiled in each, the edited-row test (a
    hash of the row's text) and the markers cost 2 ms of Python on a narrow search, more than
    the server's work (docs/benchmarks.md).
    """

    def __init__(self, query: Any, field: EmbeddingField) -> None:
        def resolve(expression: Any) -> Any:
            return expression.resolve_expression(query, allow_joins=True, reuse=None)

        self.field = field
        self.pk = resolve(F("pk"))
        self.embedded_hash = resolve(F(field.embedded_hash_name))
        self.unedited = resolve(ExpressionWrapper(~field.pending(), output_field=BooleanField()))


def compiled_once(compiler: Any, expression: Any, make: Any = None) -> tuple[str, list[Any]]:
    """``compiler.compile(expression)`` (or ``make()``) for an expression several parts of one
    statement share: compiled the first time, then repeated."""
    sql, params = once_per_statement(compiler, expression, make or (lambda: compiler.compile(expression)))
    return sql, list(params)


class NearestPassage(Expression):
    """For each row of the outer query, a column of its nearest passage (``"distance"``
    and ``"similarity"`` for the distance itself and 1 - distance); None for a row
    without passages.

    A correlated subquery on the passage table, through its unique index on
    (model, field, row, position). It is written here rather than as
    ``Subquery(Passage.objects...)``: a passage search carries six of them (the
    distance, the similarity, the four passage annotations), and building and
    compiling six querysets took 2.1 ms of a 4.2 ms search at a narrow filter, more
    than the server's work (docs/benchmarks.md). The plan is the same.
    """

    def __init__(self, outer: OuterRow, vector: str, column: str, *, edited_too: bool = False) -> None:
        """``edited_too``: a row edited since its vector was made gets its nearest passage of the
        text that vector was made of, as the vector itself ranks it (:func:`by_passages`' order);
        otherwise None, since those passages quote text the row may no longer hold. The test
        hashes the row's text, so a ranking leaves it to the columns shown, which PostgreSQL
        computes only for the rows a page returns."""
        from semantic.models import Passage

        if column in ("distance", "similarity"):
            output_field: models.Field = FloatField()
        else:
            output_field = Passage._meta.get_field(column)
        super().__init__(output_field=output_field)
        self.embedding_field = outer.field
        self.vector = vector
        self.column = column
        self.outer: list[Any] = [outer.pk, outer.embedded_hash] + ([] if edited_too else [outer.unedited])

    def get_source_expressions(self) -> list[Any]:
        return list(self.outer)

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        self.outer = list(exprs)

    def resolve_expression(
        self,
        query: Any = None,
        allow_joins: bool = True,
        reuse: Any = None,
        summarize: bool = False,
        for_save: bool = False,
    ) -> NearestPassage:
        """A copy as it is: :class:`OuterRow` resolved its parts once for the search's subqueries."""
        copy = self.copy()
        copy.is_summary = summarize
        return copy

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        # The distance is compiled twice in a search (``similarity`` is 1 - it): once is enough.
        return compiled_once(compiler, self, lambda: self.subquery(compiler, connection))

    def subquery(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        from semantic.models import Passage
        from semantic.passage_rows import cut_sizes

        quote = connection.ops.quote_name
        alias = quote("semantic_passage_nearest")

        def column(name: str) -> str:
            return f"{alias}.{quote(Passage._meta.get_field(name).column)}"

        row_pk, row_params = compiled_once(compiler, self.outer[0])
        embedded, embedded_params = compiled_once(compiler, self.outer[1])
        key = searchable_key(self.embedding_field)
        # Passages cut from the text the row's vector was made of, complete or partial: the two
        # markers of passage_rows.cut_marker, each an InitPlan, so PostgreSQL hashes them once
        # per row rather than once per passage (a third of an unfiltered search's time).
        marker = f"(SELECT md5({embedded} || %s))"
        conditions = [
            *(f"{column(name)} = %s" for name in key),
            f"{column('object_pk')} = ({row_pk})::text",
            f"{column('cut_from')} IN ({marker}, {marker})",
        ]
        params = [
            *key.values(),
            *row_params,
            *embedded_params,
            cut_sizes(self.embedding_field),
            *embedded_params,
            cut_sizes(self.embedding_field, partial=True),
        ]
        if len(self.outer) > 2:
            # ... while the row still holds that text. Of the outer row alone: PostgreSQL tests it
            # once per row, not once per passage.
            unedited, unedited_params = compiled_once(compiler, self.outer[2])
            conditions.append(f"({unedited})")
            params += unedited_params
        table = f"{quote(Passage._meta.db_table)} {alias}"
        distance = f"{column('vector')} <=> %s::vector"
        if self.column == "distance":
            value, value_params = distance, [self.vector]
        elif self.column == "similarity":
            value, value_params = f"1 - ({distance})", [self.vector]
        else:
            value, value_params = column(self.column), []
        match = " AND ".join(conditions)
        sql = f"(SELECT {value} FROM {table} WHERE {match} ORDER BY {distance}, {column('position')} LIMIT 1)"
        return sql, [*value_params, *params, self.vector]


def passage_annotations(outer: OuterRow, vector: str) -> dict[str, NearestPassage]:
    """The nearest passage's columns (:data:`PASSAGE_ANNOTATIONS`) for ``vector``, a vector literal."""
    return {name: NearestPassage(outer, vector, column) for name, column in PASSAGE_ANNOTATIONS.items()}


def with_nearest_passage(queryset: models.QuerySet, field: EmbeddingField, vector: Sequence[float]) -> models.QuerySet:
    """``queryset`` as it is, each row annotated with its nearest passage and ``passage_similarity``
    (None for a row without passages)."""
    text = vector_literal(vector)
    qs = queryset._chain()
    outer = OuterRow(qs.query, field)
    return qs.annotate(**passage_annotations(outer, text), passage_similarity=NearestPassage(outer, text, "similarity"))


def by_passages(
    queryset: models.QuerySet,
    field: EmbeddingField,
    vector: Sequence[float],
    *,
    exclude_pk: Any = None,
    min_similarity: float | None = None,
) -> models.QuerySet:
    """``queryset``'s rows that may be searched, nearest passage first (see the module docstring)."""
    require_passages(field)
    text = vector_literal(vector)
    # A row whose passages are not stored yet ranks by its own vector (its passage columns None).
    own = CosineDistance(field.indexed_vector(), Value(text))
    qs = queryset._chain()
    outer = OuterRow(qs.query, field)
    nearest = NearestPassage(outer, text, "distance", edited_too=True)
    distance = Coalesce(nearest, own, output_field=FloatField())
    rank(qs.query, field, distance, exclude_pk=exclude_pk, min_similarity=min_similarity)
    for name, expression in passage_annotations(outer, text).items():
        qs.query.add_annotation(expression, name)
    return qs
