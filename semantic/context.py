"""Context for a language model: the passages that best answer a question, within a size budget.

``semantic.context(Article.objects.filter(published=True), "When was the bridge opened?")``
returns the nearest passages of those rows, best first, as many as fit in
``budget_chars`` once rendered, each with its row, offsets and similarity.
``str()`` of the result is ready to paste into a prompt: one numbered ``<source>`` block
per passage, naming its row and character range, so the model can cite its sources. The
passages are other people's text: ``&``, ``<`` and ``>`` in them are escaped, so no text can
close its block or open one that claims to be another row's (prompt injection is still
possible, since the model reads the text; the attribution is kept honest).

The question is embedded with a question-side task type. For a ``RETRIEVAL_DOCUMENT``
field it is ``QUESTION_ANSWERING`` by default, and ``FACT_VERIFICATION`` (to find
evidence for or against a statement) or ``RETRIEVAL_QUERY`` may be asked for; Gemini
embeds the question for that purpose, and the local model treats them alike.
Passages are chosen across rows (several from one row when they are its best), by
the exact search of :mod:`semantic.passage_search`, so filters keep full recall.
:func:`acontext` is the same for async code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from asgiref.sync import sync_to_async
from django.db import models
from django.db.models import CharField
from django.db.models.functions import Cast
from django.utils.functional import Promise

from semantic.passage_search import passage_distance, require_passages, rows_to_quote, searchable_passages
from semantic.query_vectors import query_vector
from semantic.switch import serving_field

#: Default budget: about 1,000 tokens of English text.
DEFAULT_BUDGET_CHARS = 4000
#: Passages compared with the budget before giving up on filling it.
MAX_CANDIDATES = 200
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ContextPassage:
    """One passage chosen for the context."""

    text: str
    row: Any  # the model's row (Any: a type checker cannot know the model)
    position: int
    start: int
    end: int
    similarity: float

    def render(self, number: int) -> str:
        head = f'<source id="{number}" row={quoteattr(str(self.row))} characters="{self.start}-{self.end}">'
        return f"{head}\n{escape(self.text)}\n</source>"


class Context(list[ContextPassage]):
    """The chosen passages, best first; ``str()`` renders them for a prompt."""

    def __str__(self) -> str:
        return SEPARATOR.join(passage.render(number) for number, passage in enumerate(self, start=1))


def context(
    source: models.QuerySet | type[models.Model],
    question: str,
    *,
    budget_chars: int = DEFAULT_BUDGET_CHARS,
    task_type: str | None = None,
    field: str | None = None,
    min_similarity: float | None = None,
) -> Context:
    """The passages of ``source``'s rows nearest to ``question`` that fit in ``budget_chars`` (rendered).

    ``source`` is a queryset (its filters, or its slice, decide which rows may be
    quoted: ``Article.objects.similar_to(question)[:5]``), a manager or a model (all
    its rows). A passage too long for what is left of the budget is
    skipped for a shorter one further down. ``min_similarity`` drops weak matches.
    Raises ``ValueError`` for a field without ``passages``, an empty question
    (:class:`semantic.EmptyQuery`) or a task type that does not search the field,
    and :class:`semantic.SearchUnavailable` when the question cannot be embedded now.
    """
    queryset = source._default_manager.all() if isinstance(source, type) else source.all()
    if isinstance(budget_chars, bool) or not isinstance(budget_chars, int) or budget_chars < 1:
        raise ValueError(f"budget_chars must be a positive integer, not {budget_chars!r}.")
    model = queryset.model
    embedding_field = serving_field(model, field)
    require_passages(embedding_field, to="quote")
    if task_type is None and embedding_field.task_type == "RETRIEVAL_DOCUMENT":
        task_type = "QUESTION_ANSWERING"
    if isinstance(question, Promise):  # gettext_lazy(): text, as similar_to() takes it
        question = str(question)
    if not isinstance(question, str):
        raise TypeError(f"context() takes a question as text, not {type(question).__name__}.")
    vector, _ = query_vector(model, embedding_field, question, task_type=task_type)
    # A slice (the best few rows of a search) keeps its order: it decides which rows are in it.
    rows = queryset if queryset.query.is_sliced else queryset.order_by()
    rows = rows.annotate(_semantic_pk=Cast("pk", CharField())).values("_semantic_pk")
    candidates = (
        searchable_passages(embedding_field)
        .using(queryset.db)
        .filter(object_pk__in=rows)
        .annotate(distance=passage_distance(vector))
        .order_by("distance", "object_pk", "position")
    )
    if min_similarity is not None:
        candidates = candidates.filter(distance__lte=1.0 - min_similarity)
    columns = ("object_pk", "text", "position", "start", "end", "distance", "cut_from")
    found = list(candidates.values(*columns)[:MAX_CANDIDATES])
    rows = rows_to_quote(model, embedding_field, {passage["object_pk"] for passage in found}, queryset.db)
    result = Context()
    used = 0
    for passage in found:
        row, markers = rows.get(passage["object_pk"], (None, set()))
        if row is None or passage["cut_from"] not in markers:  # deleted, edited or cut otherwise since
            continue
        candidate = ContextPassage(
            text=passage["text"],
            row=row,
            position=passage["position"],
            start=passage["start"],
            end=passage["end"],
            similarity=1.0 - passage["distance"],
        )
        size = len(candidate.render(len(result) + 1)) + (len(SEPARATOR) if result else 0)
        if used + size <= budget_chars:
            result.append(candidate)
            used += size
    return result


async def acontext(source: models.QuerySet | type[models.Model], question: str, **options: Any) -> Context:
    """:func:`context` for async code: it embeds the question and reads the passages and
    their rows at once, so all of it runs in a thread, as Django's ``a``-methods run the ORM."""
    return await sync_to_async(context)(source, question, **options)
