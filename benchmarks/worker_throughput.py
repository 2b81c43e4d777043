"""Rows per second through ``semantic_embed --queue`` and a running ``qcluster``, against
sentence-transformers encoding the same texts directly, interleaved in one run.

The texts are the first ``--rows`` distinct sentences of the STS-B development split
(../shared/data/stsb/sts-dev.csv), stored as ``Note`` rows (local backend,
all-MiniLM-L6-v2). The worker (``benchmarks.settings``: one qcluster, two workers) is
started once and warmed by a first, untimed queue round, which is reported as the cold
figure (it includes loading the model in the worker). The direct baseline encodes the
same texts with the model already loaded, in this process.

    .venv/bin/python -m benchmarks.worker_throughput [--rows 2500] [--rounds 2] [--runtime R] [--worker-threads N]

The baseline is always sentence-transformers; the workers use the runtime the
project would (ONNX Runtime once ``semantic_prepare_model`` ran) unless ``--runtime``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from benchmarks.common import setup, start_worker, wait_for
from benchmarks.stsb import DATA, load


def sentences(limit: int) -> list[str]:
    seen: dict[str, None] = {}
    for _, a, b in load(DATA):
        seen.setdefault(a)
        seen.setdefault(b)
    return list(seen)[:limit]


def direct(texts: list[str]) -> float:
    """Seconds for sentence-transformers to encode ``texts``, the model already loaded."""
    from semantic.backends.local import LocalBackend

    model = LocalBackend(runtime="sentence-transformers").load()
    started = time.monotonic()
    model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return time.monotonic() - started


def queued(texts: list[str]) -> float:
    """Seconds from ``semantic_embed --queue`` to the last vector stored, the worker running."""
    from django.core.management import call_command

    from semantic import suspend_embedding
    from tests.testapp.models import Note

    Note.objects.all().delete()
    with suspend_embedding():
        Note.objects.bulk_create(Note(text=text) for text in texts)
    started = time.monotonic()
    call_command("semantic_embed", "testapp.Note", "--queue", stdout=io.StringIO())
    wait_for(lambda: not Note.objects.filter(embedding__isnull=True).exists(), timeout=1800, every=0.1)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--worker-threads", type=int, help="OMP_NUM_THREADS for the worker (torch's threads per worker process)"
    )
    parser.add_argument(
        "--runtime",
        help="the workers' local runtime: auto (default: ONNX Runtime when prepared), onnx, sentence-transformers",
    )
    args = parser.parse_args()
    setup()
    from django_q.models import Schedule, Task
    from django_q.tasks import async_task

    Schedule.objects.all().delete()  # no sweep competes with the timed rounds
    texts = sentences(args.rows)
    env = {"SEMANTIC_BENCH_BACKEND": "local"}
    if args.runtime:
        env["SEMANTIC_BENCH_RUNTIME"] = args.runtime
    if args.worker_threads:
        env["OMP_NUM_THREADS"] = str(args.worker_threads)
    worker = start_worker(env)
    try:
        ready = async_task("math.floor", 1.5, task_name="worker_throughput: worker ready")
        wait_for(lambda: Task.objects.filter(id=ready).exists(), timeout=120, every=0.2)
        cold = queued(texts)
        print(f"{len(texts)} STS-B sentences; cold queue round (model loaded by the workers): {cold:.1f}s")
        results: dict[str, list[float]] = {"direct": [], "queue": []}
        for _ in range(args.rounds):
            results["direct"].append(direct(texts))
            results["queue"].append(queued(texts))
    finally:
        worker.terminate()
        worker.wait(60)
    for name, seconds in results.items():
        rates = ", ".join(f"{len(texts) / s:.0f}" for s in seconds)
        print(f"  {name}: {', '.join(f'{s:.1f}s' for s in seconds)} ({rates} rows/s)")
    ratio = statistics.median(results["direct"]) / statistics.median(results["queue"])
    print(f"rows/s through the worker / rows/s encoding directly (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
