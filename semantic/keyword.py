"""Keyword relevance from PostgreSQL full-text search, with the GIN index that serves it.

The index and the queries share one expression, :func:`document_vector`:
``to_tsvector(config, coalesce(a, '') || ' ' || coalesce(b, ''))``. PostgreSQL uses an
expression index only for a query that repeats the expression exactly, so the index
needs no column of its own. But the index stores no ``tsvector``: ranking a match
recomputes it from the text, and an OR-ed claim matches thousands of rows. On SciFact
a keyword search took 714 ms that way against 26 ms reading a stored column (same
rows, same order; docs/benchmarks.md). So a ``KeywordIndex`` over a single
``tsvector`` field (Django's ``SearchVectorField``, or a ``GeneratedField`` whose
``output_field`` is one, which PostgreSQL keeps in step on every write) indexes that
column and searches read it.

Queries are matched with any of their words, not all: claims and questions typed in
full sentences rarely have every word in one document, and ``plainto_tsquery`` or
``websearch_to_tsquery`` (which both join words with AND) then match nothing. The
words are still those the configuration keeps (stemmed, stop words dropped). On
SciFact's training claims, matching all words found a relevant abstract in the top 10
for far fewer claims (docs/benchmarks.md).

Matches are ranked by ``ts_rank(vector, query, 1)``: how often the query's words occur,
divided by 1 + the logarithm of the document's length, so a long text does not win by
being long. On the 809 training claims over all 5,183 abstracts this scored nDCG@10
61.66, against 37.97 for ``ts_rank_cd`` (cover density, which with OR queries mostly
rewards two words that happen to sit together) and 60.12 for ``ts_rank`` unnormalised;
it is also about four times faster than ``ts_rank_cd`` there.
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import F, Func, Value
from django.db.models.expressions import Expression

from semantic.text import sanitize
from semantic.vectors import EmptyQuery, blank

#: Words are matched with OR (see the module docstring); "all" uses plainto_tsquery's AND.
MATCH_MODES = ("any", "all")


def document_vector(fields: list[str] | tuple[str, ...], config: str, model: type[models.Model] | None = None) -> Any:
    """The indexed expression: the fields' words in text search configuration ``config``,
    or the stored ``tsvector`` column of ``model`` that ``fields`` names."""
    if model is not None and stored_vector(model, fields):
        return F(fields[0])
    return SearchVector(*fields, config=config)


def stored_vector(model: type[models.Model], fields: list[str] | tuple[str, ...]) -> bool:
    """Whether ``fields`` is one ``tsvector`` field: a ``SearchVectorField``, or a
    ``GeneratedField`` whose ``output_field`` is one."""
    if len(fields) != 1:
        return False
    try:
        field = model._meta.get_field(fields[0])
    except FieldDoesNotExist:
        return False
    if isinstance(field, models.GeneratedField):
        field = field.output_field
    return isinstance(field, SearchVectorField)


class WordsQuery(Func):
    """``tsquery`` for a text typed by a user, matching any (or all) of its words."""

    output_field = models.TextField()

    def __init__(self, text: str, config: str, *, match: str = "any") -> None:
        if match not in MATCH_MODES:
            raise ValueError(f"match is one of {', '.join(MATCH_MODES)}, not {match!r}.")
        self.match = match
        # Control characters as spaces: PostgreSQL refuses a NUL in any text parameter.
        super().__init__(Value(config), Value(sanitize(text)))

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        (config_sql, config_params), (text_sql, text_params) = (
            compiler.compile(expression) for expression in self.get_source_expressions()
        )
        sql = f"plainto_tsquery({config_sql}::regconfig, {text_sql})"
        if self.match == "any":
            sql = f"replace({sql}::text, ' & ', ' | ')::tsquery"
        return sql, [*config_params, *text_params]


class Matches(Func):
    """``vector @@ query``: true for the rows the GIN index finds."""

    template = "%(expressions)s"
    arg_joiner = " @@ "
    output_field = models.BooleanField()
    conditional = True


class WordFrequencyRank(Func):
    """``ts_rank(vector, query, 1)``: how often the words occur, less for long documents."""

    function = "ts_rank"
    template = "%(function)s(%(expressions)s, 1)"
    output_field = models.FloatField()


def column_config(model: type[models.Model], fields: list[str] | tuple[str, ...]) -> str | None:
    """The text search configuration a generated ``tsvector`` column is built in, when
    its expression is a ``SearchVector`` with a literal ``config``; else None."""
    if not stored_vector(model, fields):
        return None
    field = model._meta.get_field(fields[0])
    config = getattr(getattr(field, "expression", None), "config", None)
    value = getattr(getattr(config, "config", None), "value", None)
    return value if isinstance(value, str) else None


def keyword_rank(
    model: type[models.Model], fields: list[str] | tuple[str, ...], config: str, text: str, *, match: str = "any"
) -> Expression:
    return WordFrequencyRank(document_vector(fields, config, model), WordsQuery(text, config, match=match))


def keyword_match(
    model: type[models.Model], fields: list[str] | tuple[str, ...], config: str, text: str, *, match: str = "any"
) -> Expression:
    return Matches(document_vector(fields, config, model), WordsQuery(text, config, match=match))


class KeywordIndex(GinIndex):
    """GIN index on the words of some text fields, for keyword and hybrid search.

    ``Meta.indexes = [KeywordIndex(fields=["title", "text"], name="doc_keywords")]``

    It indexes :func:`document_vector` of ``fields`` in ``config`` (default
    ``"english"``); :func:`semantic.hybrid.hybrid` finds it and searches with the same
    expression, so PostgreSQL uses it. Changing the fields or the configuration makes
    ``makemigrations`` rebuild it. ``fields=["search"]`` naming one stored ``tsvector``
    field indexes that column instead (much faster ranking; module docstring); ``config``
    is then the configuration queries are parsed in, which should be the column's.
    """

    def __init__(self, *, fields: list[str] | tuple[str, ...], name: str, config: str = "english", **kwargs: Any):
        if not fields:
            raise ValueError("KeywordIndex needs at least one text field.")
        if not isinstance(config, str) or not config:
            raise ValueError(f"config names a text search configuration such as 'english', not {config!r}.")
        self.keyword_fields = tuple(fields)
        self.config = config
        super().__init__(document_vector(self.keyword_fields, config), name=name, **kwargs)

    def create_sql(self, model: type[models.Model], schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        if stored_vector(model, self.keyword_fields):
            column = GinIndex(
                fields=list(self.keyword_fields),
                name=self.name,
                db_tablespace=self.db_tablespace,
                condition=self.condition,
                fastupdate=self.fastupdate,
                gin_pending_list_limit=self.gin_pending_list_limit,
            )
            return column.create_sql(model, schema_editor, using=using, **kwargs)
        return super().create_sql(model, schema_editor, using=using, **kwargs)

    def deconstruct(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        _, args, kwargs = super().deconstruct()
        kwargs.pop("expressions", None)
        kwargs["fields"] = list(self.keyword_fields)
        if self.config != "english":
            kwargs["config"] = self.config
        return "semantic.keyword.KeywordIndex", (), kwargs


def keyword_index(model: type[models.Model]) -> KeywordIndex | None:
    """The model's KeywordIndex, if it declares one."""
    return next((index for index in model._meta.indexes if isinstance(index, KeywordIndex)), None)


def keyword_search(
    queryset: models.QuerySet,
    text: str,
    *,
    fields: list[str] | tuple[str, ...] | None = None,
    config: str | None = None,
    match: str = "any",
) -> models.QuerySet:
    """Rows whose words match ``text``, best first, annotated with ``keyword_relevance``.

    ``fields`` and ``config`` default to the model's :class:`KeywordIndex`, so the index
    serves the search. Raises :class:`semantic.EmptyQuery` (a ``ValueError``) for a
    text with nothing to search, as ``similar_to()`` does.
    """
    fields, config = keyword_settings(queryset.model, fields, config)
    if not isinstance(text, str):
        raise TypeError(f"keyword_search() searches for a text, not {type(text).__name__}.")
    if blank(text):
        raise EmptyQuery(EmptyQuery.SEARCH_MESSAGE)
    model = queryset.model
    return (
        queryset.filter(keyword_match(model, fields, config, text, match=match))
        .annotate(keyword_relevance=keyword_rank(model, fields, config, text, match=match))
        .order_by("-keyword_relevance", "pk")
    )


def keyword_settings(
    model: type[models.Model], fields: list[str] | tuple[str, ...] | None, config: str | None
) -> tuple[tuple[str, ...], str]:
    """The fields and configuration to search: given, or the KeywordIndex's."""
    index = keyword_index(model)
    if fields is None:
        if index is None:
            raise ValueError(
                f"{model._meta.label} has no KeywordIndex; add one to Meta.indexes or pass the fields to search."
            )
        fields = index.keyword_fields
    fields = tuple(fields)
    if not fields:
        raise ValueError("Keyword search needs at least one text field.")
    if config is None:
        config = index.config if index is not None and index.keyword_fields == fields else "english"
    return fields, config
