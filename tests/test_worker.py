"""End to end: saves queue django-q2 tasks; a real ``qcluster`` process embeds the rows."""

import logging
import time
from contextlib import contextmanager

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from semantic import suspend_embedding
from semantic.dispatch import queue_task
from semantic.registry import get_embedding_field
from tests.commands import processed, running_qcluster
from tests.testapp.models import Article


@pytest.fixture
def qcluster(fake_gemini, tmp_path):
    with running_qcluster(fake_gemini, tmp_path / "qcluster.log") as process:
        yield process


@pytest.fixture
def without_sweep():
    """No sweep runs in the worker started next: only wake-ups embed rows."""
    from django_q.models import Schedule

    Schedule.objects.filter(name="semantic.embed_pending").delete()


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_embeds_saved_rows(qcluster, fake_gemini, semantic_settings, tmp_path):
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

    assert wait_for(lambda: not OrmQ.objects.exists())
    assert wait_for(lambda: 1 <= processed(tmp_path / "qcluster.log", "semantic.tasks.embed_field") <= 5)
    # Successful runs leave nothing in django-q2's "Successful tasks", where they would push the
    # project's own results out past its save_limit (dispatch.TASK_OPTIONS)...
    assert not Task.objects.exists()
    # ...while a run that raises is still recorded there, without the key.
    pks = [articles[0].pk]
    queue_task("semantic.tasks.embed_rows", "testapp.Article", "embedding", pks, "no-such-database", name="failing")
    assert wait_for(lambda: Task.objects.exists())
    [failed] = Task.objects.all()
    assert (failed.func, failed.success) == ("semantic.tasks.embed_rows", False)
    assert "no-such-database" in failed.result
    assert settings.TEST_API_KEY not in repr(failed.args) + repr(failed.kwargs) + repr(failed.result)


@pytest.mark.django_db(transaction=True)
def test_saves_while_the_worker_is_busy_queue_a_bounded_number_of_tasks(
    without_sweep, fake_gemini, semantic_settings, tmp_path
):
    """200 saves in 200 transactions while the only worker is stuck in its first task.

    Saves skip the wake-up while one waits unclaimed, so the tasks are bounded by what
    the cluster can hold claimed at once (the running task, one in its internal queue,
    one in its pusher's hand; ``workers`` = 1, ``queue_limit`` = 1) plus one waiting,
    plus the one the first task wakes for other workers when rows are left after its
    first request (the tasks after it run once it is done, and find none left).
    A row changed behind the running task's scan (a lower primary key) is embedded by
    the wake-up queued after that task was claimed.
    """
    from django_q.models import OrmQ, Task

    from semantic.backends import get_backend
    from semantic.models import RateLimit
    from semantic.ratelimit import limit_key

    early = Article.objects.create(title="Early article", body="embedded inline")  # SYNC: embedded now
    semantic_settings(SYNC=False)
    with suspend_embedding():
        Article.objects.create(title="Busy article 0", body="worker test")
    sent_before = len(fake_gemini.texts())
    # A limit, so the worker counts its requests: its first waits for its turn (the key's row, which
    # we lock), its task busy until we let go.
    limited = {"SEMANTIC_TEST_REQUESTS_PER_MINUTE": "100000"}
    RateLimit.objects.create(key=limit_key(get_backend()), window_start=timezone.now())
    with running_qcluster(fake_gemini, tmp_path / "qcluster.log", env=limited):
        with rate_limit_locked():
            Article.objects.create(title="Busy article 1", body="worker test")
            assert wait_for(waiting_on_the_rate_limit), "the worker never took its first rows"
            for i in range(2, 200):
                with transaction.atomic():
                    Article.objects.create(title=f"Busy article {i}", body="worker test")
            early.body = "changed while the worker was busy"
            early.save()
            queued_while_busy = OrmQ.objects.count()
        pending = get_embedding_field(Article).pending()
        assert wait_for(lambda: not Article.objects.filter(pending).exists()), "rows not embedded"
        assert wait_for(lambda: not OrmQ.objects.exists())
        assert queued_while_busy <= 4
        assert wait_for(lambda: 1 <= processed(tmp_path / "qcluster.log", "semantic.tasks.embed_field") <= 5)
        assert not Task.objects.exists()  # no failure (and successes are not stored)
        expected = [f"Busy article {i}\n\nworker test" for i in range(200)] + [
            "Early article\n\nchanged while the worker was busy"
        ]
        assert sorted(fake_gemini.texts()[sent_before:]) == sorted(expected)
        assert not Article.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_wakeup_task_looks_again_for_rows_saved_while_it_ran(fake_gemini):
    """Saves skip their wake-up for ``WAKE_WINDOW`` seconds after one was sent: the task sent
    must find their rows, even behind its scan (a lower primary key)."""
    from semantic.tasks import embed_field

    behind = Article.objects.create(title="Behind the scan", body="embedded")  # SYNC: embedded now
    with suspend_embedding():
        Article.objects.create(title="Pending", body="")

    def change_behind_the_scan(request):
        fake_gemini.on_request = None
        Article.objects.filter(pk=behind.pk).update(body="changed during the first scan")

    fake_gemini.reset()
    fake_gemini.on_request = change_behind_the_scan
    result = embed_field("testapp.Article", "embedding")
    assert fake_gemini.texts() == ["Pending", "Behind the scan\n\nchanged during the first scan"]
    assert result["embedded"] == 2
    assert not Article.objects.filter(get_embedding_field(Article).pending()).exists()


GONE = [
    ("testapp.Article", "renamed", "testapp.Article has no EmbeddingField named 'renamed'; it has embedding."),
    ("testapp.Memo", "embedding", "testapp.Memo has no EmbeddingField."),
    ("testapp.Deleted", "embedding", "App 'testapp' doesn't have a 'Deleted' model."),
    ("removedapp.Note", "embedding", "No installed app with label 'removedapp'."),
]


@pytest.mark.parametrize(("label", "field_name", "reason"), GONE)
@pytest.mark.django_db(transaction=True)
def test_a_task_queued_before_its_field_or_model_went_is_dropped_with_one_warning(
    label, field_name, reason, caplog, monkeypatch, fake_gemini
):
    """A wake-up or chunk left in the queue by a deploy that removed or renamed the field, the
    model or its app: raising would have django-q2 retry it every ``retry`` seconds for ever."""
    from django_q.conf import Conf
    from django_q.models import Failure
    from django_q.tasks import async_task

    from semantic.tasks import TASK_DROPPED

    calls = {
        "embed_field": (label, field_name),
        "embed_rows": (label, field_name, [1, 2]),
        "embed_chunk": (label, field_name, [1, 2], None),
    }
    monkeypatch.setattr(Conf, "SYNC", True)  # django-q2 runs each task inline, as its worker would
    caplog.set_level(logging.WARNING, logger="semantic")
    for task, args in calls.items():
        async_task(f"semantic.tasks.{task}", *args)
    assert [r.getMessage() for r in caplog.records] == [
        TASK_DROPPED % (task, label, field_name, reason) for task in calls
    ]
    assert not Failure.objects.exists()
    assert fake_gemini.request_count == 0


ADDED = [
    (
        "testapp.Article",
        "title_embedding",
        "testapp.Article has no EmbeddingField named 'title_embedding'; it has embedding.",
    ),
    ("testapp.Added", "embedding", "App 'testapp' doesn't have a 'Added' model."),
]


@pytest.mark.parametrize(("label", "field_name", "reason"), ADDED)
@pytest.mark.django_db(transaction=True)
def test_a_task_for_a_field_a_deploy_added_tells_this_older_worker_to_restart(
    label, field_name, reason, caplog, monkeypatch, fake_gemini
):
    """A web process of the new code saved a row of a field this worker, started before the deploy,
    does not know: ``migrate`` of the new code recorded its definition. Nothing was removed or renamed."""
    from django_q.conf import Conf
    from django_q.models import Failure
    from django_q.tasks import async_task

    from semantic.models import FieldDefinition
    from semantic.tasks import TASK_FOR_NEWER_CODE

    FieldDefinition.objects.create(
        model_label=label,
        field_name=field_name,
        definition="gemini:gemini-embedding-001|RETRIEVAL_DOCUMENT|128 source=title",
        since=timezone.now(),
    )
    monkeypatch.setattr(Conf, "SYNC", True)
    caplog.set_level(logging.WARNING, logger="semantic")
    async_task("semantic.tasks.embed_field", label, field_name)
    assert [r.getMessage() for r in caplog.records] == [
        TASK_FOR_NEWER_CODE % ("embed_field", label, field_name, reason)
    ]
    assert not Failure.objects.exists()


@contextmanager
def rate_limit_locked():
    """Hold the shared rate limit's rows (``SELECT ... FOR UPDATE``) from a connection of our own:
    a worker that takes its turn to send waits for the lock, with no time limit. (A row of the
    batch locked instead would be skipped: the worker never waits for a user's row lock.)"""
    from semantic.models import RateLimit

    config = connection.settings_dict
    with psycopg.connect(
        dbname=config["NAME"], user=config["USER"], host=config["HOST"], port=config["PORT"] or None
    ) as other:
        other.execute(f"SELECT 1 FROM {RateLimit._meta.db_table} FOR UPDATE")
        yield


def waiting_on_the_rate_limit():
    """Whether another session waits for a lock in a statement on the rate limit's table."""
    from semantic.models import RateLimit

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            [f"%{RateLimit._meta.db_table}%"],
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
def test_the_sweep_is_scheduled():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="semantic.embed_pending")
    assert schedule.func == EARLIER_VERSIONS_SWEEP
    assert schedule.schedule_type == Schedule.MINUTES


#: What every earlier version's sweep schedule ran (db7a134, cc20136): ``embed_pending(*targets,
#: limit=None)``. A worker of the previous release, still running through a rolling deploy after
#: ``migrate``, takes the schedule's tasks: it must find the function and accept its arguments.
EARLIER_VERSIONS_SWEEP = "semantic.tasks.embed_pending"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("earlier", ["semantic.tasks.embed_pending", "semantic.tasks.sweep"])
def test_migrate_leaves_the_sweep_schedule_runnable_by_an_earlier_versions_worker(earlier):
    """The schedule's function is frozen like a migration; a worker of this version runs it as
    the sweep in shares (tests/test_hand_over.py). ``semantic.tasks.sweep`` is what a schedule
    briefly named, which the workers of earlier versions could not import."""
    from django.core.management import call_command
    from django_q.models import Schedule

    Schedule.objects.filter(name="semantic.embed_pending").update(func=earlier, kwargs=None)
    for _ in range(2):
        call_command("migrate", verbosity=0)
        [schedule] = Schedule.objects.filter(name="semantic.embed_pending")
        assert schedule.func == EARLIER_VERSIONS_SWEEP
        # Nothing but django-q2's options: an earlier embed_pending refuses any keyword but limit.
        assert schedule.kwargs == repr({"q_options": {"save": False, "group": "semantic.embed_pending"}})
