"""The demo's two thresholds, measured on the demo's own questions.

project/questions/data/questions.tsv holds support questions, most of them in pairs
that ask the same thing in other words (listed in PAIRS by line number). The local
model embeds every question as the demo stores it (title and body joined by a blank
line), then:

- **did you mean**: a question as someone would post it (title and body) against every
  other stored question; a true pair is its paraphrase.
- **minimum search similarity**: a question's title alone, as someone would type it
  into the search box, against every other stored question; a true pair is again its
  paraphrase. Below the threshold a result is more likely noise than an answer.

For each, the similarity distribution of true pairs and of non-pairs, and the
threshold with the best F1 (0.01 steps). Runs without a database:

    .venv/bin/python -m benchmarks.demo_thresholds

That F1 is measured on the pairs the threshold was chosen on. ``--halves N`` also chooses
each threshold on the questions of half the pairs (split by pair, N random splits, each
half in turn) and measures F1 on the other half's: what a threshold chosen this way
keeps on questions it was not chosen on.

For Gemini, run the same with ``--gemini`` and ``GEMINI_API_KEY`` set (one request of
70 texts, then 35 titles), and put the two values into ``DEMO_THRESHOLDS["gemini"]`` in
project/settings.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "project" / "questions" / "data" / "questions.tsv"

#: Line numbers (1-based) of questions.tsv that are paraphrases of each other.
PAIRS = [
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (12, 13), (14, 15), (16, 17), (21, 22), (24, 25),
    (30, 31), (32, 33), (34, 35), (39, 40), (41, 42), (43, 44), (45, 46), (47, 48), (49, 50),
    (51, 52), (53, 54), (55, 56), (57, 58), (59, 60), (61, 62), (63, 64), (66, 67), (68, 69),
]  # fmt: skip

#: Queries the demo must get right, checked against the chosen thresholds.
CHECKS = [("I was charged two times", 61)]


def load() -> list[tuple[str, str]]:
    return [tuple(line.split("\t")[:2]) for line in DATA.read_text().splitlines() if line.strip()]


def best_threshold(similarities: np.ndarray, truth: np.ndarray) -> tuple[float, float, float, float]:
    """(threshold, F1, precision, recall) with the best F1 over 0.01 steps."""
    best = (0.0, 0.0, 0.0, 0.0)
    for threshold in np.arange(0.05, 0.99, 0.01):
        predicted = similarities >= threshold
        tp = float(np.sum(predicted & truth))
        precision = tp / max(1, predicted.sum())
        recall = tp / max(1, truth.sum())
        f1 = 2 * precision * recall / max(1e-9, precision + recall)
        if f1 > best[1]:
            best = (round(float(threshold), 2), f1, precision, recall)
    return best


def f1_at(threshold: float, similarities: np.ndarray, truth: np.ndarray) -> float:
    predicted = similarities >= threshold
    tp = float(np.sum(predicted & truth))
    precision, recall = tp / max(1, predicted.sum()), tp / max(1, truth.sum())
    return 2 * precision * recall / max(1e-9, precision + recall)


def held_out(name: str, pairs_of, splits: int) -> None:
    """Each threshold chosen on half the pairs' questions, its F1 on the other half's."""
    rng = np.random.default_rng(0)
    chosen, kept, best = [], [], []
    for _ in range(splits):
        order = rng.permutation(len(PAIRS))
        halves = [[line - 1 for i in part for line in PAIRS[i]] for part in np.array_split(order, 2)]
        for tuned, other in (halves, halves[::-1]):
            threshold = best_threshold(*pairs_of(tuned))[0]
            similarities, truth = pairs_of(other)
            chosen.append(threshold)
            kept.append(f1_at(threshold, similarities, truth))
            best.append(best_threshold(similarities, truth)[1])
    print(
        f"  {name}, chosen on half the pairs ({2 * splits} choices): threshold median {np.median(chosen):.2f} "
        f"(range {min(chosen):.2f}-{max(chosen):.2f}); F1 on the other half {np.mean(kept):.3f} "
        f"(that half's own best {np.mean(best):.3f})"
    )


def describe(name: str, similarities: np.ndarray, truth: np.ndarray) -> float:
    true, other = similarities[truth], similarities[~truth]
    print(f"\n{name}: {truth.sum()} true pairs, {(~truth).sum()} non-pairs")
    for label, values in (("true pairs", true), ("non-pairs", other)):
        q = np.percentile(values, [5, 25, 50, 75, 95])
        print(
            f"  {label:10} min {values.min():.3f}  p5 {q[0]:.3f}  p25 {q[1]:.3f}  median {q[2]:.3f}"
            f"  p75 {q[3]:.3f}  p95 {q[4]:.3f}  max {values.max():.3f}"
        )
    threshold, f1, precision, recall = best_threshold(similarities, truth)
    print(f"  best F1 {f1:.3f} at {threshold:.2f} (precision {precision:.3f}, recall {recall:.3f})")
    return threshold


def embedder(gemini: bool):
    if gemini:
        from google import genai
        from google.genai import types

        client = genai.Client(api_key=os.environ["GEMINI_API_KEY"])

        def embed(texts: list[str]) -> np.ndarray:
            config = types.EmbedContentConfig(task_type="SEMANTIC_SIMILARITY", output_dimensionality=384)
            result = client.models.embed_content(model="gemini-embedding-001", contents=texts, config=config)
            array = np.array([e.values for e in result.embeddings])
            return array / np.linalg.norm(array, axis=1, keepdims=True)

        return embed
    from semantic.backends.local import LocalBackend

    model = LocalBackend().load()
    return lambda texts: model.encode(texts, normalize_embeddings=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemini", action="store_true", help="measure Gemini (needs GEMINI_API_KEY) instead")
    parser.add_argument("--halves", type=int, default=0, metavar="N", help="also N random half/half splits by pair")
    args = parser.parse_args()
    rows = load()
    embed = embedder(args.gemini)
    documents = embed([f"{title}\n\n{body}" for title, body in rows])
    partner = {}
    for a, b in PAIRS:
        partner[a - 1], partner[b - 1] = b - 1, a - 1
    asked = sorted(partner)
    titles = embed([rows[i][0] for i in asked])
    print(f"{len(rows)} questions, {len(PAIRS)} paraphrase pairs ({'gemini' if args.gemini else 'local'})")

    def pairs_of(queries: np.ndarray, which: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Similarities of the questions ``which`` (all asked ones by default) to every other stored one."""
        similarities, truth = [], []
        for row, query in zip(asked, queries, strict=True):
            if which is not None and row not in which:
                continue
            for other in range(len(rows)):
                if other != row:
                    similarities.append(float(query @ documents[other]))
                    truth.append(partner[row] == other)
        return np.array(similarities), np.array(truth)

    did_you_mean = describe("did you mean (question vs question)", *pairs_of(documents[asked]))
    minimum = describe("minimum search similarity (title as query vs question)", *pairs_of(titles))
    if args.halves:
        print()
        held_out("did you mean", lambda which: pairs_of(documents[asked], which), args.halves)
        held_out("minimum search similarity", lambda which: pairs_of(titles, which), args.halves)
    print()
    for query, line in CHECKS:
        similarity = float(embed([query])[0] @ documents[line - 1])
        print(f"check: {query!r} vs line {line} {rows[line - 1][0]!r}: {similarity:.3f}")
    print(f"\nDEMO_THRESHOLDS: did_you_mean={did_you_mean:.2f}, min_similarity={minimum:.2f}")


if __name__ == "__main__":
    main()
