"""Workers on several machines: two real ``qcluster`` processes share django-q2's Redis broker.

The test starts its own ``redis-server`` (no persistence, on a free port, stopped at the
end) and two workers on it with tests/settings_redis.py; this process saves rows as a
web server on a third machine would, its wake-ups going through Redis too.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from django.db import transaction

from semantic.dispatch import WAKE_WINDOW, forget_wakeups
from semantic.tasks import HAND_OVER_BATCHES
from tests.commands import processed, running_qcluster
from tests.settings_redis import redis_connection
from tests.testapp.models import Article

redis = pytest.importorskip("redis", reason="the redis package is not installed (pip install -e '.[dev]')")

pytestmark = [
    pytest.mark.skipif(
        shutil.which("redis-server") is None,
        reason="redis-server is not installed (`make test` installs Debian's redis-server when run as root)",
    ),
    pytest.mark.django_db(transaction=True),
]

ROWS = 200
WORKERS = 2
BATCH_SIZE = 10  # the workers' requests: a backlog of a few requests is handed on


def wait_for(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def redis_port(tmp_path) -> Iterator[int]:
    """A redis-server of our own on 127.0.0.1, keeping nothing on disk; its port."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return server.poll() is not None

    try:
        assert wait_for(answers, timeout=30) and server.poll() is None, "redis-server did not start"
        yield port
    finally:
        client.close()
        server.kill()
        server.wait()


@pytest.fixture
def redis_broker(redis_port, monkeypatch) -> None:
    """This process queues on the same Redis as the workers (django-q2 reads Q_CLUSTER once, at import)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", redis_connection(redis_port))
    forget_wakeups()
    yield
    forget_wakeups()


@pytest.fixture
def workers(redis_port, redis_broker, fake_gemini, tmp_path) -> Iterator[None]:
    """Two ``qcluster`` processes on Redis, both up and idle; no sweep, so only wake-ups embed."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import Schedule
    from django_q.status import Stat

    Schedule.objects.filter(name="semantic.embed_pending").delete()
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings_redis",
        "SEMANTIC_TEST_REDIS_PORT": str(redis_port),
        "SEMANTIC_TEST_BATCH_SIZE": str(BATCH_SIZE),
    }
    broker = get_broker()
    with ExitStack() as stack:
        for log in worker_logs(tmp_path):
            stack.enter_context(running_qcluster(fake_gemini, log, env=env))

        def all_idle() -> bool:
            return [stat.status for stat in Stat.get_all(broker)] == [Conf.IDLE] * WORKERS

        assert wait_for(all_idle), "the two workers did not both report to Redis"
        yield


def worker_logs(tmp_path) -> list[Path]:
    """Each worker's ``qcluster`` log."""
    return [tmp_path / f"qcluster-{n}.log" for n in range(WORKERS)]


def wakeups_sent(port: int) -> int:
    """Tasks pushed onto the Redis queue so far, by this process and by the workers handing rows on
    (the workers run no schedule)."""
    with redis.Redis(port=port) as client:
        return client.info("commandstats").get("cmdstat_rpush", {}).get("calls", 0)


def enqueued(records) -> int:
    """django-q2's "Enqueued" log records among ``records``: the tasks one process queued."""
    return sum(record.getMessage().startswith("Enqueued") for record in records)


def settled(port: int, tmp_path) -> bool:
    """Whether every task pushed so far has run and none is left: done and nothing to hand on."""
    from django_q.brokers import get_broker

    return done(tmp_path) == wakeups_sent(port) and get_broker().queue_size() == 0


def done(tmp_path) -> int:
    """The workers' successful embed_field runs: the app's successes are not stored, their logs count them."""
    return sum(processed(log, "semantic.tasks.embed_field") for log in worker_logs(tmp_path))


def handed_on(tmp_path) -> int:
    """Tasks the workers queued themselves (a run that left rows wakes another worker)."""
    return sum(log.read_text().count("Enqueued") for log in worker_logs(tmp_path))


def test_two_workers_on_one_redis_broker_embed_every_row_once(
    workers, redis_port, fake_gemini, semantic_settings, tmp_path, caplog
):
    from django_q.models import OrmQ, Task

    semantic_settings(SYNC=False)
    caplog.set_level(logging.INFO, logger="django-q")
    started = time.monotonic()
    for i in range(ROWS):
        with transaction.atomic():
            Article.objects.create(title=f"Shared broker article {i}", body="two workers")
    saving = time.monotonic() - started
    ours = enqueued(caplog.records)

    assert wait_for(lambda: settled(redis_port, tmp_path)), f"{done(tmp_path)} of {wakeups_sent(redis_port)} tasks done"
    assert not Article.objects.filter(embedding__isnull=True).exists()
    assert Counter(fake_gemini.texts()) == Counter(f"Shared broker article {i}\n\ntwo workers" for i in range(ROWS))
    assert not Task.objects.exists()  # no failure
    # One async_task() per window from this process, none per row; none through the ORM queue.
    assert 1 <= ours <= 1 + saving / WAKE_WINDOW
    assert done(tmp_path) == ours + handed_on(tmp_path)  # every task, ours and the workers', ran once
    assert not OrmQ.objects.exists()


def test_a_worker_hands_rows_on_to_the_other_through_redis(
    workers, redis_port, fake_gemini, semantic_settings, tmp_path
):
    """One wake-up for a backlog bigger than a request: the worker that takes it queues another task
    on Redis after its first request, as a worker on another machine would (BATCH_SIZE 10 here).
    Fewer rows than a run's share (HAND_OVER_BATCHES requests): only that hand-on queues a task."""
    from django_q.models import OrmQ, Task

    rows = HAND_OVER_BATCHES * BATCH_SIZE // 2
    semantic_settings(SYNC=False)
    with transaction.atomic():  # one commit: one wake-up
        Article.objects.bulk_create(Article(title=f"Backlog article {i}", body="handed on") for i in range(rows))
        Article.objects.first().save()  # bulk_create queues nothing; a save queues the one wake-up

    assert wait_for(lambda: settled(redis_port, tmp_path)), f"{done(tmp_path)} of {wakeups_sent(redis_port)} tasks done"
    assert not Article.objects.filter(embedding__isnull=True).exists()
    assert Counter(fake_gemini.texts()) == Counter(f"Backlog article {i}\n\nhanded on" for i in range(rows))
    assert not Task.objects.exists()  # no failure
    assert handed_on(tmp_path) >= 1  # through the broker: SYNC would have embedded them in the worker
    assert done(tmp_path) == 1 + handed_on(tmp_path)
    assert not OrmQ.objects.exists()
