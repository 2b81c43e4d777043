"""What an EmbeddingField adds to ``save()``, and what many saves cost the queue.

1. The median ``Model.objects.create()`` of a small row (``Memo``) against the same row
   with an EmbeddingField (``EmbeddedMemo``), interleaved in one run, default
   ``CONN_MAX_AGE`` (0), no worker running, on-commit work included. Also the same
   model inside ``suspend_embedding()``, which shows what the field's companion
   columns cost on their own.
2. ``--rows`` rows saved in ``--transactions`` transactions while a real ``qcluster``
   (two workers) embeds them through the fake Gemini server with ``--latency`` seconds
   per request: how many django-q2 tasks the saves enqueued, when the last vector
   landed and when the queue was empty again.

    .venv/bin/python -m benchmarks.save_latency [--saves 300] [--rows 2000] [--transactions 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from benchmarks.common import setup, start_worker, wait_for
from tests.fake_gemini import FakeGemini


def ormq_inserts() -> int:
    """How many rows django-q2's ORM queue table has ever received (its id sequence)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT last_value, is_called FROM django_q_ormq_id_seq")
        value, called = cursor.fetchone()
    return value if called else 0


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(create: Callable[[], object]) -> float:
    started = time.perf_counter()
    create()
    return time.perf_counter() - started


def single_saves(saves: int) -> None:
    from django_q.models import OrmQ

    from semantic import suspend_embedding
    from tests.testapp.models import EmbeddedMemo, Memo

    Memo.objects.all().delete()
    EmbeddedMemo.objects.all().delete()
    OrmQ.objects.all().delete()

    def suspended() -> object:
        with suspend_embedding():
            return EmbeddedMemo.objects.create(text="A memo saved without queueing its embedding")

    runs: dict[str, tuple[Callable[[], object], list[float]]] = {
        "without the field": (lambda: Memo.objects.create(text="A memo about the quarterly report"), []),
        "with the field": (lambda: EmbeddedMemo.objects.create(text="A memo about the quarterly report"), []),
        "with the field, suspend_embedding()": (suspended, []),
    }
    for create, _ in runs.values():
        for _ in range(20):
            create()
    queued = ormq_inserts()
    for i in range(saves):
        order = list(runs.values())
        for create, samples in order[i % 3 :] + order[: i % 3]:
            samples.append(timed(create))
    queued = ormq_inserts() - queued
    plain = median_ms(runs["without the field"][1])
    print(f"median Model.objects.create() of {saves} saves each, interleaved, CONN_MAX_AGE=0, no worker:")
    for label, (_, samples) in runs.items():
        print(f"  {label}: {median_ms(samples):.2f} ms (ratio {median_ms(samples) / plain:.2f})")
    print(f"  django-q2 tasks enqueued by the {saves} saves with the field: {queued}")
    OrmQ.objects.all().delete()
    EmbeddedMemo.objects.all().delete()


def saves_with_worker(server: FakeGemini, rows: int, transactions: int, latency: float) -> None:
    from django.db import transaction
    from django_q.models import OrmQ, Task
    from django_q.tasks import async_task

    from tests.testapp.models import EmbeddedMemo

    worker = start_worker({"SEMANTIC_BENCH_BACKEND": "gemini", "SEMANTIC_TEST_BASE_URL": server.base_url})
    try:
        ready = async_task("math.floor", 1.5, task_name="save_latency: worker ready")
        wait_for(lambda: Task.objects.filter(id=ready).exists(), timeout=120, every=0.2)
        server.reset()
        server.latency = latency
        before = ormq_inserts()
        started = time.monotonic()
        per_transaction = rows // transactions
        for t in range(transactions):
            with transaction.atomic():
                for i in range(per_transaction):
                    EmbeddedMemo.objects.create(
                        text=f"Memo {t}-{i}: minutes of meeting number {t * per_transaction + i}"
                    )
        saved = time.monotonic() - started
        wait_for(lambda: not EmbeddedMemo.objects.filter(embedding__isnull=True).exists(), timeout=1800, every=0.1)
        last_vector = time.monotonic() - started
        wait_for(lambda: not OrmQ.objects.exists(), timeout=3600, every=0.1)
        drained = time.monotonic() - started
        tasks = ormq_inserts() - before
    finally:
        worker.terminate()
        worker.wait(60)
    print(
        f"{per_transaction * transactions} rows saved in {transactions} transactions with a running qcluster "
        f"(2 workers, fake Gemini with {latency * 1000:.0f} ms per request):"
    )
    print(f"  saves took {saved:.1f}s; django-q2 tasks enqueued: {tasks}; requests: {server.request_count}")
    print(f"  last vector after {last_vector:.1f}s; queue empty after {drained:.1f}s")
    EmbeddedMemo.objects.all().delete()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--transactions", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--skip-worker", action="store_true", help="only measure single saves")
    args = parser.parse_args()
    server = FakeGemini(latency=args.latency).start()
    setup(BACKEND="semantic.backends.gemini.GeminiBackend", BASE_URL=server.base_url, SYNC=False)
    single_saves(args.saves)
    if not args.skip_worker:
        saves_with_worker(server, args.rows, args.transactions, args.latency)
    server.stop()


if __name__ == "__main__":
    main()
