"""Duplicate detection at 100,000 x 768 with 1,000 planted near-duplicate pairs.

``Passage.objects.duplicates(threshold)`` against an exact blockwise numpy scan of
the same vectors (float32 matrix products, every pair compared), both on this
machine in the same run: wall time, recall of the planted pairs, and agreement with
the exact pair set.

    .venv/bin/python -m benchmarks.duplicates [--threshold 0.9] [--neighbours 5] [--ef-search 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import vectors as dataset
from benchmarks.common import setup


def numpy_pairs(vectors: np.ndarray, threshold: float, block: int = 4096) -> set[tuple[int, int]]:
    pairs = set()
    for start in range(0, len(vectors), block):
        scores = vectors[start : start + block] @ vectors.T
        rows, cols = np.nonzero(scores >= threshold)
        for r, c in zip(rows + start, cols):
            if r < c:
                pairs.add((int(r), int(c)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--neighbours", type=int, default=5)
    parser.add_argument("--ef-search", type=int, default=20)
    parser.add_argument("--skip-numpy", action="store_true", help="reuse no baseline (for tuning only)")
    args = parser.parse_args()
    setup(BACKEND="semantic.backends.gemini.GeminiBackend")
    from tests.testapp.models import Passage

    vectors, groups, planted = dataset.make()
    ids = dataset.load(vectors, groups)
    to_index = {pk: i for i, pk in enumerate(ids)}

    started = time.monotonic()
    found = Passage.objects.duplicates(args.threshold, neighbours=args.neighbours, ef_search=args.ef_search)
    orm_seconds = time.monotonic() - started
    found_pairs = {tuple(sorted((to_index[a.pk], to_index[b.pk]))) for a, b, _ in found}
    planted_found = sum(1 for a, b in planted if tuple(sorted((a, b))) in found_pairs)
    print(f"{len(ids)} rows x {dataset.DIMENSIONS} halfvec, {len(planted)} planted pairs, threshold {args.threshold}")
    print(
        f"duplicates(neighbours={args.neighbours}, ef_search={args.ef_search}): {orm_seconds:.1f}s, "
        f"{len(found_pairs)} pairs, planted recall {planted_found / len(planted):.3f}"
    )
    if args.skip_numpy:
        return
    started = time.monotonic()
    exact = numpy_pairs(vectors, args.threshold)
    numpy_seconds = time.monotonic() - started
    print(
        f"numpy exact blockwise scan: {numpy_seconds:.1f}s, {len(exact)} pairs "
        f"(planted among them: {sum(1 for p in planted if tuple(sorted(p)) in exact)})"
    )
    print(
        f"time ratio duplicates()/numpy: {orm_seconds / numpy_seconds:.2f}; "
        f"recall vs exact pairs: {len(found_pairs & exact) / max(1, len(exact)):.3f}; "
        f"pairs not in the exact set: {len(found_pairs - exact)}"
    )


if __name__ == "__main__":
    main()
