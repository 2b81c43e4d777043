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

    def __init__(self, field: EmbeddingField, vector: str, column: str, *, edited_too: bool = False) -> None:
        """``edited_too``: a row edited since its vector was made gets its nearest passage of the
        text that vector was made of, as the vector itself ranks it (:func:`by_passages`' order);
        otherwise None, since those passages quote text the row may no longer hold. The test
        hashes the row's text, so a ranking leaves it to the columns shown, which PostgreSQL
        computes only for the rows a page returns."""
        from semantic.models import Passage
        from semantic.passage_rows import cut_marker

        if column in ("distance", "similarity"):
            output_field: models.Field = FloatField()
        else:
            output_field = Passage._meta.get_field(column)
        super().__init__(output_field=output_field)
        self.embedding_field = field
        self.vector = vector
        self.column = column
        self.row_pk: Any = F("pk")
        # Passages cut from the text the row's vector was made of, complete or partial ...
        embedded = F(field.embedded_hash_name)
        self.cut_from: Any = cut_marker(field, embedded)
        self.partial_from: Any = cut_marker(field, embedded, partial=True)
        # ... while the row still holds that text: an edited row's passages quote what it no longer says.
        self.unedited: Any = (
            Value(True) if edited_too else ExpressionWrapper(~field.pending(), output_field=BooleanField())
        )

    def get_source_expressions(self) -> list[Any]:
        return [self.row_pk, self.cut_from, self.partial_from, self.unedited]

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        self.row_pk, self.cut_from, self.partial_from, self.unedited = exprs

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        from semantic.models import Passage

        quote = connection.ops.quote_name
        row_pk, row_params = compiler.compile(self.row_pk)
        alias = quote("semantic_passage_nearest")

        def column(name: str) -> str:
            return f"{alias}.{quote(Passage._meta.get_field(name).column)}"

        cut_from, cut_params = compiler.compile(self.cut_from)
        partial_from, partial_params = compiler.compile(self.partial_from)
        unedited, unedited_params = compiler.compile(self.unedited)
        key = searchable_key(self.embedding_field)
        match = " AND ".join(
            [
                *(f"{column(name)} = %s" for name in key),
                f"{column('object_pk')} = ({row_pk})::text",
                f"{column('cut_from')} IN ({cut_from}, {partial_from})",
                # Of the outer row alone: PostgreSQL tests it once per row, not once per passage.
                f"({unedited})",
            ]
        )
        match_params = [*key.values(), *row_params, *cut_params, *partial_params, *unedited_params]
        table = f"{quote(Passage._meta.db_table)} {alias}"
        distance = f"{column('vector')} <=> %s::vector"
        if self.column == "distance":
            value, value_params = distance, [self.vector]
        elif self.column == "similarity":
            value, value_params = f"1 - ({distance})", [self.vector]
        else:
            value, value_params = column(self.column), []
        sql = f"(SELECT {value} FROM {table} WHERE {match} ORDER BY {distance}, {column('position')} LIMIT 1)"
        return sql, [*value_params, *match_params, self.vector]


def passage_annotations(field: EmbeddingField, vector: str) -> dict[str, NearestPassage]:
    """The nearest passage's columns (:data:`PASSAGE_ANNOTATIONS`) for ``vector``, a vector literal."""
    return {name: NearestPassage(field, vector, column) for name, column in PASSAGE_ANNOTATIONS.items()}


def with_nearest_passage(queryset: models.QuerySet, field: EmbeddingField, vector: Sequence[float]) -> models.QuerySet:
    """``queryset`` as it is, each row annotated with its nearest passage and ``passage_similarity``
    (None for a row without passages)."""
    text = vector_literal(vector)
    return queryset.annotate(
        **passage_annotations(field, text), passage_similarity=NearestPassage(field, text, "similarity")
    )


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
    distance = Coalesce(NearestPassage(field, text, "distance", edited_too=True), own, output_field=FloatField())
    qs = queryset._chain()
    rank(qs.query, field, distance, exclude_pk=exclude_pk, min_similarity=min_similarity)
    for name, expression in passage_annotations(field, text).items():
        qs.query.add_annotation(expression, name)
    return qs
