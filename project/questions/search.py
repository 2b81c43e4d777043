"""The search box: keywords and meaning in one ranking, and which results are worth showing.

Results are ranked by :func:`semantic.hybrid` (reciprocal rank fusion of full-text
search over the title, body and answer and of similarity in meaning), so a question
that uses the exact words someone typed (an error code, a product name) rises even
when the model does not see it as the nearest in meaning.

A result is shown when it is at least the minimum similarity in meaning (the measured
floor in relevance.py) or when it contains every word of the query. Keyword search
matches *any* word, and the long answers hold many common words, so a keyword match
alone would let almost any English query list half the board; every word together is
evidence enough, and a query that meets neither rule still gets "No good match".
"""

from __future__ import annotations

from django.db.models import Q

from project.questions.models import Question
from semantic import hybrid
from semantic.keyword import keyword_search


def search(query: str, min_similarity: float | None):
    """Questions for ``query``, best first, each annotated with ``similarity``, ``score`` and both ranks.

    Raises ``EmptyQuery`` and ``SearchUnavailable`` as ``similar_to()`` does.
    """
    near = Question.objects.similar_to(query)
    if min_similarity is not None:
        every_word = keyword_search(Question.objects.all(), query, match="all").values("pk")
        near = near.filter(Q(similarity__gte=min_similarity) | Q(pk__in=every_word))
    return hybrid(near, query)
