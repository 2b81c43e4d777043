"""The search box: keywords and meaning in one ranking, and which results are worth showing.

Results are ranked by :func:`semantic.hybrid`: reciprocal rank fusion of full-text
search over the title, body and answer (the model's KeywordIndex) and of similarity
in meaning. A question that uses the exact words someone typed (an error code, a
product name) rises even when the model does not see it as the nearest in meaning.

Under each question the page shows the part of its answer nearest to the query:
the answers are cut into passages (``Question.answer_embedding``), each embedded
whole, and ``with_passage()`` picks each shown question's nearest one. The ranking
stays with the question's own words and meaning. The passages are a courtesy: with
Gemini they need a second query vector (``RETRIEVAL_QUERY``), and when that one cannot
be made now the results are shown without them.

Which questions are shown at all is a separate, stricter rule: at least the minimum
similarity in meaning (the measured floor in relevance.py), or every word of the
query in the question itself (title and body). Words in the answers are not enough:
they run to eight paragraphs, so common words ("get", "account") are in most of them
and any English query would list half the board. A query that meets neither rule
still gets "No good match".
"""

from __future__ import annotations

from django.db.models import Q

from project.questions.models import Question
from semantic import SearchUnavailable, hybrid
from semantic.keyword import keyword_search

#: Where every word of a query must be for a question below the floor to be shown.
QUESTION_FIELDS = ("title", "body")


def search(query: str, min_similarity: float | None):
    """Questions for ``query``, best first, each annotated with ``similarity``, ``score``, both ranks
    and the nearest passage of its answer (``passage_text``, ``passage_similarity``, ...).

    Raises ``EmptyQuery`` and ``SearchUnavailable`` as ``similar_to()`` does.
    """
    near = Question.objects.similar_to(query, field="embedding")
    if min_similarity is not None:
        every_word = keyword_search(Question.objects.all(), query, fields=QUESTION_FIELDS, match="all")
        near = near.filter(Q(similarity__gte=min_similarity) | Q(pk__in=every_word.values("pk")))
    ranked = hybrid(near, query, field="embedding")
    try:
        return ranked.with_passage(query, field="answer_embedding")
    except SearchUnavailable:
        return ranked
