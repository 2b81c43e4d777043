"""A 100,000-row backfill with ``semantic_embed`` against the fake Gemini server with
200 ms of simulated latency per request: inline, and with ``--queue`` and two django-q2
workers. The baseline is the Gemini backend called directly in a loop (same batch
size, same server) over the first 10,000 texts, in the same run.

    .venv/bin/python -m benchmarks.backfill [--rows 100000] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import io
import resource
import time

import psutil

from benchmarks.common import setup, start_worker, wait_for
from tests.fake_gemini import FakeGemini


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    server = FakeGemini(latency=args.latency).start()
    setup(BACKEND="semantic.backends.gemini.GeminiBackend", BASE_URL=server.base_url, SYNC=False)
    from django.core.management import call_command

    from semantic import suspend_embedding
    from semantic.backends import get_backend
    from tests.testapp.models import Article

    def load() -> None:
        Article.objects.all().delete()
        with suspend_embedding():
            Article.objects.bulk_create(
                (
                    Article(title=f"Backfill article {i}", body=f"Body text of row {i} for the backfill")
                    for i in range(args.rows)
                ),
                batch_size=5000,
            )

    load()
    texts = [f"Backfill article {i}\n\nBody text of row {i} for the backfill" for i in range(10_000)]
    backend = get_backend()
    server.reset()
    server.latency = args.latency
    started = time.monotonic()
    for start in range(0, len(texts), backend.max_batch_size):
        backend.embed(texts[start : start + backend.max_batch_size], task_type="SEMANTIC_SIMILARITY", dimensions=128)
    baseline_rate = len(texts) / (time.monotonic() - started)
    requests = server.request_count
    print(f"baseline: backend called directly, {len(texts)} texts, {requests} requests, {baseline_rate:.0f} rows/s")

    server.reset()
    server.latency = args.latency
    started = time.monotonic()
    call_command("semantic_embed", "testapp.Article", stdout=io.StringIO())
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    embedded = Article.objects.filter(embedding__isnull=False).count()
    print(
        f"semantic_embed inline: {embedded} rows in {seconds:.0f}s, {embedded / seconds:.0f} rows/s "
        f"({embedded / seconds / baseline_rate:.2f} x baseline), {server.request_count} requests, "
        f"peak memory of this process {peak:.0f} MB"
    )

    load()
    server.reset()
    server.latency = args.latency
    worker = start_worker({"SEMANTIC_BENCH_BACKEND": "gemini", "SEMANTIC_TEST_BASE_URL": server.base_url})
    try:
        time.sleep(3)
        started = time.monotonic()
        call_command("semantic_embed", "testapp.Article", "--queue", stdout=io.StringIO())
        peak_workers = 0.0

        def done() -> bool:
            nonlocal peak_workers
            processes = [worker, *psutil.Process(worker.pid).children(recursive=True)]
            rss = sum(
                p.memory_info().rss
                for p in (psutil.Process(x.pid) if not isinstance(x, psutil.Process) else x for x in processes)
            )
            peak_workers = max(peak_workers, rss / 2**20)
            return not Article.objects.filter(embedding__isnull=True).exists()

        seconds = wait_for(done, timeout=3600, every=1.0)
    finally:
        worker.terminate()
        worker.wait(60)
    print(
        f"semantic_embed --queue, one qcluster with two workers: {args.rows} rows in {seconds:.0f}s, "
        f"{args.rows / seconds:.0f} rows/s ({args.rows / seconds / baseline_rate:.2f} x baseline), "
        f"{server.request_count} requests, peak memory of the cluster's processes {peak_workers:.0f} MB"
    )
    server.stop()


if __name__ == "__main__":
    main()
