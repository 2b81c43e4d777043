"""How close is close: the demo's thresholds, and words for scores.

Similarity numbers mean little to a reader, and what counts as "close" depends on the
model. ``MEASURED`` holds, per backend name, the two thresholds the demo uses, measured
on the demo's own paraphrase pairs by benchmarks/demo_thresholds.py (see
docs/benchmarks.md); ``settings.DEMO_THRESHOLDS`` (same shape) overrides them:

- ``min_similarity``: search results below it are not shown, so a query that matches
  nothing says so instead of listing every row;
- ``did_you_mean``: a new question at least this similar to a stored one is shown that
  one first.

A backend with no measured entry gets no minimum and the previous 0.75 for "did you
mean"; re-derive both with the script (``--gemini`` for Gemini) and add an entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from semantic.backends import get_backend

#: ``python -m benchmarks.demo_thresholds``: the best-F1 thresholds on the demo's 28 pairs.
MEASURED = {"local": {"min_similarity": 0.48, "did_you_mean": 0.53}}


@dataclass(frozen=True)
class Thresholds:
    min_similarity: float | None = None
    did_you_mean: float = 0.75

    def strength(self, similarity: float) -> str:
        """ "very close" from the did-you-mean threshold, "close" halfway to it, "related" below."""
        floor = self.min_similarity if self.min_similarity is not None else 0.0
        if similarity >= self.did_you_mean:
            return "very close"
        if similarity >= (floor + self.did_you_mean) / 2:
            return "close"
        return "related"


def thresholds() -> Thresholds:
    """The configured backend's thresholds from ``settings.DEMO_THRESHOLDS``."""
    name = get_backend().name
    configured = getattr(settings, "DEMO_THRESHOLDS", {})
    return Thresholds(**configured.get(name, MEASURED.get(name, {})))


def describe(questions, limits: Thresholds) -> None:
    """Give each result a ``strength`` word and a ``percent`` for its bar."""
    for question in questions:
        question.strength = limits.strength(question.similarity)
        question.percent = round(max(0.0, min(1.0, question.similarity)) * 100)
