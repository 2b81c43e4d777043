"""Keyword relevance from PostgreSQL full-text search, served by a KeywordIndex.

The index and the queries share one expression
(:func:`semantic.keyword_index.document_vector`: the words of a bounded prefix of the
text), so the index needs no column of its own. But the index stores no ``tsvector``: ranking a match
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

from django.db import models
from django.db.models import Func, Value
from django.db.models.expressions import Expression

from semantic.keyword_index import MAX_CHARS, WholeTextKeywordIndex, column_config, document_vector, keyword_index
from semantic.text import sanitize
from semantic.vectors import EmptyQuery, blank

#: Words are matched with OR (see the module docstring); "all" uses plainto_tsquery's AND.
MATCH_MODES = ("any", "all")
#: Characters of a query whose words are searched for; the rest of a longer text is left out.
MAX_QUERY_CHARS = 10_000
#: Distinct words (lexemes) a query matches with "any": the first ones of the text.
MAX_QUERY_WORDS = 256

OTHER_CONFIG = (
    "{label}.{field} holds words made in the {stored!r} text search configuration, so words parsed "
    "in config={config!r} would not match them: leave config out, or pass config={stored!r}."
)

#: The distinct lexemes of a text in the order they first occur, at most MAX_QUERY_WORDS,
#: each quoted as tsquery input reads it ('' for a quote, a backslash doubled), OR-ed.
ANY_WORDS = (
    r"(SELECT coalesce(string_agg('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''', "
    "' | ' ORDER BY first, lexeme), '')::tsquery "
    "FROM (SELECT lexeme, positions[1] AS first FROM unnest(to_tsvector({config}::regconfig, {text})) "
    f"ORDER BY first, lexeme LIMIT {MAX_QUERY_WORDS}) AS words)"
)


class WordsQuery(Func):
    """``tsquery`` for a text typed by a user, matching any (or all) of its words.

    A search box takes pasted text, and ``ts_rank`` takes time in proportion to the
    query's terms for every matching row: a 100 KB paste of ten words repeated made a
    tsquery of 15,000 OR-ed terms and two seconds of ranking over 1,000 rows. So only the
    first :data:`MAX_QUERY_CHARS` characters are read, and "any" has each distinct word
    once, the first :data:`MAX_QUERY_WORDS` of them. A shorter query ranks exactly as
    before: ``ts_rank`` already counted a repeated query word once (it sorts and
    de-duplicates the query's words), and a document matches the same words
    (docs/benchmarks.md, "Keyword query bound"). "all" keeps ``plainto_tsquery``'s
    structure over those characters (a dictionary that gives a word several lexemes
    needs one of them, not all).
    """

    output_field = models.TextField()

    def __init__(self, text: str, config: str, *, match: str = "any") -> None:
        if match not in MATCH_MODES:
            raise ValueError(f"match is one of {', '.join(MATCH_MODES)}, not {match!r}.")
        self.match = match
        # Control characters as spaces: PostgreSQL refuses a NUL in any text parameter.
        super().__init__(Value(config), Value(sanitize(text[:MAX_QUERY_CHARS])))

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        (config_sql, config_params), (text_sql, text_params) = (
            compiler.compile(expression) for expression in self.get_source_expressions()
        )
        if self.match == "any":
            sql = ANY_WORDS.format(config=config_sql, text=text_sql)
        else:
            sql = f"plainto_tsquery({config_sql}::regconfig, {text_sql})"
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


def indexed_vector(model: type[models.Model], fields: tuple[str, ...], config: str) -> Any:
    """:func:`document_vector` as the model's KeywordIndex builds it for these fields (its
    ``max_chars``), so the index serves the query; the default bound for other fields."""
    index = keyword_index(model)
    max_chars = index.max_chars if index is not None and index.keyword_fields == fields else MAX_CHARS
    return document_vector(fields, config, model, max_chars=max_chars)


def keyword_rank(
    model: type[models.Model], fields: tuple[str, ...], config: str, text: str, *, match: str = "any"
) -> Expression:
    return WordFrequencyRank(indexed_vector(model, fields, config), WordsQuery(text, config, match=match))


def keyword_match(
    model: type[models.Model], fields: tuple[str, ...], config: str, text: str, *, match: str = "any"
) -> Expression:
    return Matches(indexed_vector(model, fields, config), WordsQuery(text, config, match=match))


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
    """The fields and configuration to search: given, or the KeywordIndex's.

    A ``config`` other than the one a generated ``tsvector`` column is built in is
    refused: the query's words, stemmed another way, would silently match nothing.
    """
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
    elif not isinstance(config, str) or not config.strip():
        raise ValueError(f"config names a text search configuration such as 'english', not {config!r}.")
    else:
        stored = column_config(model, fields)
        if stored is not None and config_name(config) != config_name(stored):
            label = model._meta.label
            raise ValueError(OTHER_CONFIG.format(label=label, field=fields[0], stored=stored, config=config))
    return fields, config


def config_name(config: str) -> str:
    """``config`` compared as a name: its last part (``public.english_custom`` and
    ``english_custom`` are the same one on the usual search path), without case or quotes.

    Two names this takes for one may still be two configurations (in two schemas, or
    quoted names differing in case); refusing a right one would be worse than letting
    that rare pair through."""
    return config.strip().rsplit(".", 1)[-1].strip('"').lower()


def __getattr__(name: str) -> Any:
    # Migrations written before KeywordIndex had max_chars name semantic.keyword.KeywordIndex:
    # they get the index they built (semantic.keyword_index's docstring).
    if name == "KeywordIndex":
        return WholeTextKeywordIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
