"""STS-B dev through the ORM vs sentence-transformers called directly.

Every sentence of ../shared/data/stsb/sts-dev.csv is stored as a row; a real django-q2
worker embeds the rows with the local backend (all-MiniLM-L6-v2); each pair's
similarity is then read through ``similar_to``. The baseline is the same model called
directly. Also derives the default duplicate threshold: the similarity that best
separates pairs people scored 4 or more (same meaning, minor differences) from the rest,
and the F1 the shipped default (``DEFAULT_DUPLICATE_THRESHOLD``, derived from dev) reaches.

    .venv/bin/python -m benchmarks.stsb
    .venv/bin/python -m benchmarks.stsb --pairs ../shared/data/stsb/sts-test.csv   # another split, same layout
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from benchmarks.common import BASE_DIR, setup, start_worker, wait_for

DATA = BASE_DIR.parent / "shared" / "data" / "stsb" / "sts-dev.csv"


def load(path: Path) -> list[tuple[float, str, str]]:
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            pairs.append((float(row[4]), row[5], row[6]))
    return pairs


def genres(path: Path) -> list[str]:
    """Each pair's genre (first column: main-captions, main-news, main-forums), in load()'s order."""
    with path.open(encoding="utf-8") as handle:
        return [row[0] for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]


def f1_at(threshold: float, similarities: np.ndarray, duplicate: np.ndarray) -> float:
    predicted = similarities >= threshold
    tp = float(np.sum(predicted & duplicate))
    precision = tp / max(1, predicted.sum())
    recall = tp / max(1, duplicate.sum())
    return 2 * precision * recall / max(1e-9, precision + recall)


def best_threshold(similarities: np.ndarray, duplicate: np.ndarray) -> tuple[float, float]:
    best = (0.0, 0.0)
    for threshold in np.arange(0.50, 0.99, 0.01):
        f1 = f1_at(threshold, similarities, duplicate)
        if f1 > best[1]:
            best = (round(float(threshold), 2), f1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, default=DATA, help="STS-B pairs, tab-separated (default: %(default)s)")
    arguments = parser.parse_args()
    setup()
    from semantic.backends.local import LocalBackend
    from semantic.query import DEFAULT_DUPLICATE_THRESHOLD
    from semantic.tasks import queue_pending
    from tests.testapp.models import Note

    pairs = load(arguments.pairs)
    sentences = sorted({s for _, a, b in pairs for s in (a, b)})
    print(f"STS-B {arguments.pairs.name}: {len(pairs)} pairs, {len(sentences)} distinct sentences")

    started = time.monotonic()
    model = LocalBackend().load()
    vectors = model.encode(sentences, normalize_embeddings=True, batch_size=64)
    direct_seconds = time.monotonic() - started
    index = {s: i for i, s in enumerate(sentences)}
    direct = np.array([float(vectors[index[a]] @ vectors[index[b]]) for _, a, b in pairs])

    Note.objects.all().delete()
    worker = start_worker({"SEMANTIC_BENCH_BACKEND": "local"})
    try:
        started = time.monotonic()
        Note.objects.bulk_create(Note(text=s) for s in sentences)
        queue_pending(Note)
        wait_for(lambda: not Note.objects.filter(embedding__isnull=True).exists(), timeout=900)
        worker_seconds = time.monotonic() - started
    finally:
        worker.terminate()
        worker.wait(30)

    rows = dict(Note.objects.values_list("text", "pk"))
    started = time.monotonic()
    through_orm = []
    for _, a, b in pairs:
        source = Note.objects.get(pk=rows[a])
        if a == b:
            through_orm.append(1.0)
            continue
        through_orm.append(Note.objects.filter(pk=rows[b]).similar_to(source).values_list("similarity", flat=True)[0])
    orm_seconds = time.monotonic() - started
    through_orm = np.array(through_orm)

    gold = np.array([score for score, _, _ in pairs])
    rho_orm = spearmanr(gold, through_orm).statistic * 100
    rho_direct = spearmanr(gold, direct).statistic * 100
    duplicate = gold >= 4.0
    threshold, f1 = best_threshold(through_orm, duplicate)
    print(f"Spearman x100 through the field, worker and similar_to: {rho_orm:.2f}")
    print(f"Spearman x100 sentence-transformers directly:           {rho_direct:.2f}")
    print(f"difference: {abs(rho_orm - rho_direct):.3f} (must be <= 0.5)")
    print(f"max |similarity difference| per pair: {np.max(np.abs(through_orm - direct)):.5f}")
    print(
        f"embedding {len(sentences)} rows through the worker: {worker_seconds:.1f}s "
        f"(direct encode {direct_seconds:.1f}s, ratio {worker_seconds / direct_seconds:.2f})"
    )
    print(f"{len(pairs)} pair similarities through similar_to: {orm_seconds:.1f}s")
    print(f"duplicate threshold maximising F1 for score >= 4 on these pairs: {threshold:.2f} (F1 {f1:.3f})")
    shipped = f1_at(DEFAULT_DUPLICATE_THRESHOLD, through_orm, duplicate)
    print(f"F1 at the shipped default DEFAULT_DUPLICATE_THRESHOLD {DEFAULT_DUPLICATE_THRESHOLD}: {shipped:.3f}")
    kinds = np.array(genres(arguments.pairs))
    for genre in sorted(set(kinds)):
        mask = kinds == genre
        f1 = f1_at(DEFAULT_DUPLICATE_THRESHOLD, through_orm[mask], duplicate[mask])
        best, best_f1 = best_threshold(through_orm[mask], duplicate[mask])
        print(
            f"  {genre}: {mask.sum()} pairs, {duplicate[mask].sum()} scored 4 or more; "
            f"F1 {f1:.3f} at the default, {best_f1:.3f} at its own best {best:.2f}"
        )


if __name__ == "__main__":
    main()
