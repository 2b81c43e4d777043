"""A category for a question that is not posted yet, from the questions already labelled.

The Ask page suggests it on its second step and the user accepts or changes it; a
question's own page shows a suggestion for one posted without a category. Both come
from the library's k-NN vote (semantic.classify): the five labelled questions
nearest in meaning vote with their similarity, and the confidence is the winner's
share of the vote.
"""

from __future__ import annotations

from dataclasses import dataclass

from project.questions.models import Category, Question
from semantic import EmptyQuery, SearchUnavailable, annotate_predictions, suggest_label


@dataclass(frozen=True)
class Suggestion:
    category: str
    confidence: float

    @property
    def name(self) -> str:
        return Category(self.category).label

    @property
    def percent(self) -> int:
        return round(self.confidence * 100)


def suggest(title: str, body: str) -> Suggestion | None:
    """The suggested category of a new question's text, or None when it cannot be embedded now."""
    try:
        prediction = suggest_label(Question.objects.all(), f"{title}\n\n{body}", "category", field="embedding")
    except (EmptyQuery, SearchUnavailable):
        return None
    return Suggestion(prediction.label, prediction.confidence) if prediction.label else None


def suggest_for(question: Question) -> Suggestion | None:
    """The suggested category of a posted question without one (it needs its vector)."""
    if question.category or question.embedding is None:
        return None
    row = annotate_predictions(Question.objects.filter(pk=question.pk), "category", field="embedding").values_list(
        "predicted_label", "confidence"
    )
    predicted = row.first()
    return Suggestion(*predicted) if predicted and predicted[0] else None
