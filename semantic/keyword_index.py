"""The GIN index behind keyword search, and the expression it and the queries share.

PostgreSQL uses an expression index only for a query that repeats the expression
exactly, so :func:`document_vector` is the one place both sides get it from:
``to_tsvector(config, left(coalesce(a, '') || ' ' || coalesce(b, ''), 100000))``.

**Why a prefix.** PostgreSQL refuses a ``tsvector`` over 1 MB ("string is too long for
tsvector"), and the index computes one on every save: a text of many distinct words (a
log dump, a data table, base64, a long document in several scripts) reached that at
about 170,000 characters, and the row could not be saved, nor the index added to a table
holding it. Each character of text costs at most about 8.5 bytes of ``tsvector`` in the
worst inputs measured (single CJK ideographs of the supplementary planes joined by
hyphens, which give each part and the whole compound a lexeme; distinct ideographs
separated by spaces cost 6; URLs 4; distinct three-letter words 3; prose under 2), so
:data:`MAX_CHARS` characters stay under 1 MB with a margin, whatever the text. Repeats
cost less: PostgreSQL keeps at most 256 positions a word, each position at most 16,383.
The bound holds for configurations whose dictionaries give each word at most one
lexeme (all built-in ones); a thesaurus or ispell dictionary that expands words can
exceed it. Words past the prefix are not keyword-searchable (search by meaning and
passages still see the whole text); a shorter text is indexed whole, so its ranking is
as before.

**Why migrations name the bound.** A ``KeywordIndex`` writes ``max_chars`` into the
migration, so a later change of the bound shows up in ``makemigrations`` as a rebuild of
the index instead of queries that silently stop matching it. Migrations written before
the bound existed name ``semantic.keyword.KeywordIndex``, which still means the index
they built over the whole text (:class:`WholeTextKeywordIndex`): they replay as they ran,
and ``makemigrations`` sees that it differs from :class:`KeywordIndex` and writes the
rebuild (README: Upgrading).
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import F
from django.db.models.functions import Left

#: Characters of text a KeywordIndex holds the words of (module docstring).
MAX_CHARS = 100_000


class PrefixVector(SearchVector):
    """``to_tsvector(config, left(<the fields joined by spaces>, max_chars))``."""

    def __init__(self, *expressions: Any, config: str, max_chars: int) -> None:
        super().__init__(*expressions, config=config)
        self.max_chars = max_chars

    def as_sql(self, compiler: Any, connection: Any, function: Any = None, template: Any = None) -> Any:
        # SearchVector fills in the config only in its own template; this one adds left(),
        # with max_chars as a literal so the index and the queries have the same expression.
        config_sql, config_params = compiler.compile(self.config)
        template = f"%(function)s({config_sql.replace('%', '%%')}, left(%(expressions)s, {int(self.max_chars)}))"
        sql, params = super().as_sql(compiler, connection, function=function, template=template)
        return sql, [*config_params, *params]


def document_vector(
    fields: list[str] | tuple[str, ...],
    config: str,
    model: type[models.Model] | None = None,
    *,
    max_chars: int | None = MAX_CHARS,
) -> Any:
    """The indexed expression: the words of the first ``max_chars`` characters of the
    fields in text search configuration ``config`` (``None``: the whole text), or the
    stored ``tsvector`` column of ``model`` that ``fields`` names."""
    if model is not None and stored_vector(model, fields):
        return F(fields[0])
    if max_chars is None:
        return SearchVector(*fields, config=config)
    return PrefixVector(*fields, config=config, max_chars=max_chars)


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


def column_config(model: type[models.Model], fields: list[str] | tuple[str, ...]) -> str | None:
    """The text search configuration a generated ``tsvector`` column is built in, when
    its expression is a ``SearchVector`` with a literal ``config``; else None."""
    if not stored_vector(model, fields):
        return None
    field = model._meta.get_field(fields[0])
    config = getattr(getattr(field, "expression", None), "config", None)
    value = getattr(getattr(config, "config", None), "value", None)
    return value if isinstance(value, str) else None


def unbounded_column(model: type[models.Model], fields: list[str] | tuple[str, ...]) -> bool:
    """Whether ``fields`` names a generated ``tsvector`` column built from whole texts
    (no ``Left()`` in its expression): a row of many distinct words cannot be saved."""
    if not stored_vector(model, fields):
        return False
    expression = getattr(model._meta.get_field(fields[0]), "expression", None)
    if expression is None:  # a SearchVectorField the project fills itself
        return False
    pending = [expression]
    while pending:
        node = pending.pop()
        if isinstance(node, Left):
            return False
        pending.extend(node.get_source_expressions() if hasattr(node, "get_source_expressions") else ())
    return True


class KeywordIndex(GinIndex):
    """GIN index on the words of some text fields, for keyword and hybrid search.

    ``Meta.indexes = [KeywordIndex(fields=["title", "text"], name="doc_keywords")]``

    It indexes :func:`document_vector` of ``fields`` in ``config`` (default
    ``"english"``): the words of their first ``max_chars`` characters (default
    :data:`MAX_CHARS`, module docstring). :func:`semantic.hybrid.hybrid` finds it and
    searches with the same expression, so PostgreSQL uses it. Changing the fields, the
    configuration or ``max_chars`` makes ``makemigrations`` rebuild it.
    ``fields=["search"]`` naming one stored ``tsvector`` field indexes that column
    instead (much faster ranking; see :mod:`semantic.keyword`); ``config`` is then the
    configuration queries are parsed in, which should be the column's, and the column's
    own expression decides what it holds (README: Keyword search).
    """

    path = "semantic.KeywordIndex"

    def __init__(
        self,
        *,
        fields: list[str] | tuple[str, ...],
        name: str,
        config: str = "english",
        max_chars: int | None = MAX_CHARS,
        **kwargs: Any,
    ):
        if not fields:
            raise ValueError("KeywordIndex needs at least one text field.")
        if not isinstance(config, str) or not config:
            raise ValueError(f"config names a text search configuration such as 'english', not {config!r}.")
        if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
            raise ValueError(f"max_chars is a number of characters of at least 1, not {max_chars!r}.")
        self.keyword_fields = tuple(fields)
        self.config = config
        self.max_chars = max_chars
        super().__init__(document_vector(self.keyword_fields, config, max_chars=max_chars), name=name, **kwargs)

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
        kwargs["max_chars"] = self.max_chars  # always: the migration records the bound it built
        return self.path, (), kwargs


class WholeTextKeywordIndex(KeywordIndex):
    """What migrations written before ``max_chars`` existed call
    ``semantic.keyword.KeywordIndex``: the index over the whole text (module docstring).
    Declare :class:`KeywordIndex` in models, never this."""

    path = "semantic.keyword.KeywordIndex"

    def __init__(self, *, fields: list[str] | tuple[str, ...], name: str, **kwargs: Any):
        kwargs.pop("max_chars", None)
        super().__init__(fields=fields, name=name, max_chars=None, **kwargs)

    def deconstruct(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        path, args, kwargs = super().deconstruct()
        kwargs.pop("max_chars")
        return path, args, kwargs


def keyword_index(model: type[models.Model]) -> KeywordIndex | None:
    """The model's KeywordIndex, if it declares one."""
    return next((index for index in model._meta.indexes if isinstance(index, KeywordIndex)), None)
