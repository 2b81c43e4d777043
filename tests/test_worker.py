"""End to end: saves queue django-q2 tasks; a real ``qcluster`` process embeds the rows."""

import signal
import subprocess
import time

import pytest
from django.conf import settings

from tests.commands import manage
from tests.testapp.models import Article


@pytest.fixture
def qcluster(fake_gemini, tmp_path):
    log = tmp_path / "qcluster.log"
    with log.open("wb") as out:
        process = manage(fake_gemini, "qcluster", stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        print(log.read_text())


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_embeds_saved_rows(qcluster, fake_gemini, semantic_settings):
    from django_q.models import OrmQ, Task

    semantic_settings(SYNC=False)
    articles = [Article.objects.create(title=f"Queued article {i}", body="worker test") for i in range(5)]
    # save() returned without touching the network: the work is in django-q2's queue.
    assert all(a.embedding is None for a in articles)
    assert OrmQ.objects.count() + Task.objects.count() >= 1

    assert wait_for(lambda: not Article.objects.filter(embedding__isnull=True).exists()), "rows not embedded in 60s"
    assert qcluster.poll() is None
    assert sorted(fake_gemini.texts()) == sorted(f"Queued article {i}\n\nworker test" for i in range(5))
    assert fake_gemini.request_count <= 5

    assert wait_for(lambda: Task.objects.filter(func="semantic.tasks.embed_rows").count() == 5)
    for task in Task.objects.all():
        assert task.success, task.result
        assert settings.TEST_API_KEY not in repr(task.args) + repr(task.kwargs) + repr(task.result)
    assert sum(t.result["embedded"] for t in Task.objects.filter(func="semantic.tasks.embed_rows")) == 5


@pytest.mark.django_db(transaction=True)
def test_the_sweep_is_scheduled():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="semantic.embed_pending")
    assert schedule.func == "semantic.tasks.embed_pending"
    assert schedule.schedule_type == Schedule.MINUTES
