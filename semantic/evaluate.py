"""Retrieval quality on your own data: nDCG@10, recall@100 and MRR@10.

Queries and judgements use BEIR's layout: ``queries.jsonl`` (one ``{"_id", "text"}``
a line) and ``qrels.tsv`` (``query-id``, ``corpus-id``, ``score`` with a header). Each
query is searched through the same queryset calls an application makes
(``similar_to()``, :func:`~semantic.keyword.keyword_search`,
:func:`~semantic.hybrid.hybrid`), so the figures describe what users get.

The measures are the standard ones (as in BEIR's pytrec_eval): nDCG with gains equal
to the judged score and a log2 discount, ideal ranking from the judgements; recall as
the share of relevant documents found; MRR as the reciprocal rank of the first
relevant one. Judgements of 0 or less count as not relevant. The means are taken as
BEIR takes them from pytrec_eval: over every judged query that is searched, so a query
whose judgements are all 0 scores 0 on each measure (leaving it out would raise every
figure), while a judged query id missing from the queries file is never searched and so
is left out. A relevant document missing from the table still counts in the ideal
ranking and recall's denominator, as pytrec_eval counts it from the judgements.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from django.db import models

from semantic.hybrid import DEFAULT_K, hybrid
from semantic.keyword import keyword_search

METHODS = ("meaning", "keyword", "hybrid", "passages", "hybrid-passages")
#: What is compared when no methods are named; both passage searches too when the field has passages.
DEFAULT_METHODS = ("meaning", "keyword", "hybrid")
MEASURES = ("ndcg@10", "recall@100", "mrr@10")
#: How many rows each search returns: enough for recall@100.
DEPTH = 100

Judgements = dict[str, dict[str, int]]

NOTHING_TO_EVALUATE = (
    "No judged query has both a text in the queries file and a relevant document (a score above 0); "
    "check that the query ids of the two files match."
)


def load_queries(path: str | Path) -> dict[str, str]:
    queries = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                queries[str(row["_id"])] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}, line {number}: expected a JSON object with _id and text.") from None
    return queries


def load_qrels(path: str | Path) -> Judgements:
    judgements: Judgements = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise ValueError(f"{path}: the first line must be the header query-id<TAB>corpus-id<TAB>score.")
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                query, document, score = row[0], row[1], int(row[2])
            except (IndexError, ValueError):
                raise ValueError(f"{path}, line {number}: expected query-id, corpus-id and an integer score.") from None
            judgements.setdefault(query, {})[document] = score
    return judgements


def ndcg(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    gains = [relevant.get(doc, 0) for doc in ranked[:k]]
    dcg = sum(gain / math.log2(position + 2) for position, gain in enumerate(gains) if gain > 0)
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    best = sum(gain / math.log2(position + 2) for position, gain in enumerate(ideal))
    return dcg / best if best else 0.0


def recall(ranked: Sequence[str], relevant: dict[str, int], k: int = 100) -> float:
    wanted = {doc for doc, grade in relevant.items() if grade > 0}
    return len(wanted.intersection(ranked[:k])) / len(wanted) if wanted else 0.0


def mrr(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    for position, doc in enumerate(ranked[:k], start=1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / position
    return 0.0


def scores(ranked: Sequence[str], relevant: dict[str, int]) -> dict[str, float]:
    return {"ndcg@10": ndcg(ranked, relevant), "recall@100": recall(ranked, relevant), "mrr@10": mrr(ranked, relevant)}


def searches(
    queryset: models.QuerySet,
    *,
    field: str | None = None,
    k: float = DEFAULT_K,
    weights: tuple[float, float] = (1.0, 1.0),
    candidates: int = DEPTH,
) -> dict[str, Callable[[str], models.QuerySet]]:
    """The three searches, as an application would write them, each ``DEPTH`` rows deep."""
    return {
        # HNSW returns at most ef_search rows, so a search for 100 rows asks for 100.
        "meaning": lambda text: queryset.similar_to(text, field=field, ef_search=max(DEPTH, 40)),
        "keyword": lambda text: keyword_search(queryset, text),
        "hybrid": lambda text: hybrid(queryset, text, field=field, k=k, weights=weights, candidates=candidates),
        # Rows ranked by their nearest passage (fields with ``passages``): exact, so no depth to ask for.
        "passages": lambda text: queryset.similar_to(text, field=field, passages=True),
        "hybrid-passages": lambda text: hybrid(
            queryset, text, field=field, k=k, weights=weights, candidates=candidates, passages=True
        ),
    }


def default_methods(field: Any) -> tuple[str, ...]:
    """The searches to compare on ``field``: the three, and both passage searches when it has them."""
    return (*DEFAULT_METHODS, "passages", "hybrid-passages") if field.passages else DEFAULT_METHODS


def judged_queries(queries: dict[str, str], judgements: Judgements) -> list[tuple[str, str]]:
    """``(query id, text)`` of the queries the means are over: judged ones that have a text."""
    return [(qid, queries[qid]) for qid in judgements if qid in queries]


def coverage(queries: dict[str, str], judgements: Judgements) -> dict[str, int]:
    """How many judged queries are averaged, how many of those score 0 for want of a
    relevant document, and how many are left out for want of a text."""
    judged = judged_queries(queries, judgements)
    return {
        "averaged": len(judged),
        "without_relevant": sum(1 for qid, _ in judged if not any(g > 0 for g in judgements[qid].values())),
        "without_text": len(judgements) - len(judged),
    }


def evaluate(
    queryset: models.QuerySet,
    queries: dict[str, str],
    judgements: Judgements,
    *,
    field: str | None = None,
    id_field: str = "pk",
    k: float = DEFAULT_K,
    weights: tuple[float, float] = (1.0, 1.0),
    candidates: int = DEPTH,
    methods: Iterable[str] = DEFAULT_METHODS,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean of each measure for each method, plus the median seconds a search took."""
    judged = judged_queries(queries, judgements)
    if not any(g > 0 for qid, _ in judged for g in judgements[qid].values()):
        # Every figure would be 0: the files do not match, or the scores are not BEIR's.
        raise ValueError(NOTHING_TO_EVALUATE)
    run = searches(queryset, field=field, k=k, weights=weights, candidates=candidates)
    results: dict[str, dict[str, float]] = {}
    for method in methods:
        totals = dict.fromkeys(MEASURES, 0.0)
        seconds = []
        for done, (qid, text) in enumerate(judged, start=1):
            started = time.perf_counter()
            ranked = [str(value) for value in run[method](text).values_list(id_field, flat=True)[:DEPTH]]
            seconds.append(time.perf_counter() - started)
            for name, value in scores(ranked, judgements[qid]).items():
                totals[name] += value
            if progress:
                progress(done, len(judged))
        results[method] = {name: total / len(judged) for name, total in totals.items()}
        results[method]["median_seconds"] = statistics.median(seconds)
        results[method]["queries"] = len(judged)
    return results


def parse_weights(value: str) -> tuple[float, float]:
    try:
        keyword, meaning = (float(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"weights are two numbers, keyword,meaning (such as 1,1), not {value!r}.") from None
    return keyword, meaning


def report_lines(results: dict[str, Any]) -> list[str]:
    lines = [f"{'search':<16}{'nDCG@10':>10}{'recall@100':>12}{'MRR@10':>10}{'median ms':>11}"]
    for method, row in results.items():
        lines.append(
            f"{method:<16}{100 * row['ndcg@10']:>10.2f}{100 * row['recall@100']:>12.2f}"
            f"{100 * row['mrr@10']:>10.2f}{1000 * row['median_seconds']:>11.1f}"
        )
    return lines
