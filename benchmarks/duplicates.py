"""Duplicate detection by ``duplicates()`` against exact search with numpy, same run.

Three data sets (``--data``, any of them; default ``pairs``, the original benchmark):

- ``stsb``: every distinct sentence of STS-B dev (../shared/data/stsb/sts-dev.csv),
  stored as ``Note`` rows and embedded by ``embed_pending()`` with the local backend
  (all-MiniLM-L6-v2, 384 dimensions), with an HNSW index; real text, so a sentence
  can have several near-duplicates.
- ``groups``: 20,000 x 768 halfvec ``Passage`` rows, clustered as in
  benchmarks/vectors.py, holding 200 planted groups of 10 near-duplicates (every
  row of a group has 9 duplicates, more than the 5 neighbours probed first), beside
  the 1,000 planted pairs that benchmarks/vectors.py adds.
- ``pairs``: the 100,000 x 768 table of benchmarks/vectors.py with 1,000 planted
  pairs (the original benchmark; the largest).

For each, at each threshold: the pairs ``duplicates()`` finds, recall against the
exact pair set (every pair compared, float32 matrix products), pairs outside it, and
wall time of both.

    .venv/bin/python -m benchmarks.duplicates [--data stsb groups pairs] [--neighbours 5] [--ef-search 20]
    .venv/bin/python -m benchmarks.duplicates --data stsb groups
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from benchmarks import vectors as dataset
from benchmarks.common import setup
from benchmarks.stsb import DATA, load

GROUP_ROWS = 20_000
GROUPS = 200
GROUP_SIZE = 10
GROUP_SEED = 11


def numpy_pairs(vectors: np.ndarray, threshold: float, block: int = 4096) -> set[tuple[int, int]]:
    pairs = set()
    for start in range(0, len(vectors), block):
        scores = vectors[start : start + block] @ vectors.T
        rows, cols = np.nonzero(scores >= threshold)
        for r, c in zip(rows + start, cols):
            if r < c:
                pairs.add((int(r), int(c)))
    return pairs


def compare(name: str, run: Callable[[float], list], ids: list[int], vectors: np.ndarray, threshold: float) -> None:
    """Print ``duplicates()`` against the exact pairs of the same (unit) vectors."""
    to_index = {pk: i for i, pk in enumerate(ids)}
    started = time.monotonic()
    found = run(threshold)
    orm_seconds = time.monotonic() - started
    found_pairs = {tuple(sorted((to_index[a.pk], to_index[b.pk]))) for a, b, _ in found}
    started = time.monotonic()
    exact = numpy_pairs(vectors, threshold)
    numpy_seconds = time.monotonic() - started
    recall = len(found_pairs & exact) / max(1, len(exact))
    print(
        f"| {name} | {threshold} | {len(exact)} | {len(found_pairs & exact)} | {recall:.4f} | "
        f"{len(found_pairs - exact)} | {orm_seconds:.2f} s | {numpy_seconds:.2f} s | "
        f"{orm_seconds / numpy_seconds:.1f} |"
    )


def header() -> None:
    print("| data | threshold | exact pairs | found | recall | outside exact | duplicates() | numpy | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")


def stsb_rows() -> tuple[list[int], np.ndarray]:
    """STS-B dev sentences as embedded Note rows (reused when already there)."""
    from django.db import connection

    from semantic import embed_pending, suspend_embedding
    from semantic.registry import get_embedding_field
    from tests.testapp.models import Note

    sentences = sorted({s for _, a, b in load(DATA) for s in (a, b)})
    field = get_embedding_field(Note)
    if sorted(Note.objects.values_list("text", flat=True)) != sentences:
        Note.objects.all().delete()
        with suspend_embedding():
            Note.objects.bulk_create(Note(text=s) for s in sentences)
    started = time.monotonic()
    embedded = embed_pending(Note)
    seconds = time.monotonic() - started
    print(f"STS-B dev: {len(sentences)} distinct sentences; embed_pending: {seconds:.0f}s {embedded}")
    assert not Note.objects.filter(field.needs_embedding()).exists()
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE INDEX IF NOT EXISTS bench_note_embedding_hnsw ON testapp_note "
            "USING hnsw (embedding vector_cosine_ops)"
        )
        cursor.execute("ANALYZE testapp_note")
    rows = list(Note.objects.order_by("pk").values_list("pk", "embedding"))
    vectors = np.array([v for _, v in rows], dtype=np.float32)
    return [pk for pk, _ in rows], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def group_vectors() -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors with ``GROUPS`` planted groups of ``GROUP_SIZE`` near-duplicates."""
    vectors, groups, _ = dataset.make(GROUP_ROWS - GROUPS * (GROUP_SIZE - 1), seed=GROUP_SEED)
    rng = np.random.default_rng(GROUP_SEED)
    bases = rng.choice(len(vectors), size=GROUPS, replace=False)
    scale = 0.3 / np.sqrt(2 * dataset.DIMENSIONS)  # about 0.96 similar to each other, as in make()
    copies = np.repeat(vectors[bases], GROUP_SIZE - 1, axis=0)
    copies += scale * rng.normal(size=copies.shape).astype(np.float32)
    vectors[bases] += scale * rng.normal(size=(GROUPS, dataset.DIMENSIONS)).astype(np.float32)
    vectors = np.vstack([vectors, copies])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16).astype(np.float32)
    return vectors, np.arange(len(vectors)) % dataset.GROUPS


def passage_rows(vectors: np.ndarray, groups: np.ndarray, seed: int) -> list[int]:
    from semantic.registry import get_embedding_field
    from tests.testapp.models import Passage

    ids = dataset.load(vectors, groups, seed=seed)
    spec = get_embedding_field(Passage).spec()
    Passage.objects.exclude(embedding_model=spec).update(embedding_model=spec)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", choices=["stsb", "groups", "pairs"], default=["pairs"])
    parser.add_argument("--neighbours", type=int, default=5)
    parser.add_argument("--ef-search", type=int, default=20)
    args = parser.parse_args()
    setup()
    from tests.testapp.models import Note, Passage

    def run(model: type) -> Callable[[float], list]:
        return lambda t: model.objects.duplicates(t, neighbours=args.neighbours, ef_search=args.ef_search)

    print(f"duplicates(neighbours={args.neighbours}, ef_search={args.ef_search})")
    results = []
    if "stsb" in args.data:
        ids, vectors = stsb_rows()
        results += [("STS-B dev", run(Note), ids, vectors, t) for t in (0.81, 0.9)]
    if "groups" in args.data:
        vectors, groups = group_vectors()
        ids = passage_rows(vectors, groups, GROUP_SEED)
        results += [(f"{GROUPS} groups of {GROUP_SIZE} in {len(ids)}", run(Passage), ids, vectors, 0.9)]
    header()
    for name, search, ids, vectors, threshold in results:
        compare(name, search, ids, vectors, threshold)
    if "pairs" in args.data:
        vectors, groups, planted = dataset.make()
        ids = passage_rows(vectors, groups, dataset.SEED)
        compare(f"{len(planted)} planted pairs in {len(ids)}", run(Passage), ids, vectors, 0.9)


if __name__ == "__main__":
    main()
