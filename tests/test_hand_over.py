"""A wake-up task's bounded share (review 3, djangoq F7): after ``HAND_OVER_BATCHES`` requests'
worth of rows it queues the rest as a new task behind the project's own tasks queued meanwhile,
so one worker (README's ``"workers": 1``) is not held until the whole backlog is embedded.
The scheduled sweep does the same for each field; ``embed_pending()`` called from code does not.

Real PostgreSQL, django-q2's ORM broker (its queue, ``OrmQ``, read in the order it hands tasks
out) and the fake Gemini server.
"""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.signing import SignedPackage

from semantic import embed_pending, suspend_embedding
from semantic.dispatch import SWEEP_SCHEDULE_NAME, forget_wakeups
from semantic.registry import get_embedding_field
from semantic.tasks import HAND_OVER_BATCHES, embed_field
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = 2
SHARE = HAND_OVER_BATCHES * BATCH
ROWS = 2 * SHARE + 3


def queued() -> list[tuple[str, tuple]]:
    """The tasks waiting in django-q2's ORM queue, first out first: (function, arguments)."""
    from django_q.models import OrmQ

    tasks = [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]
    return [(task["func"], tuple(task["args"])) for task in tasks]


def schedule_the_sweep() -> None:
    """What a cluster's scheduler does when the sweep is due: queue the task its schedule names."""
    from django_q.brokers import get_broker
    from django_q.models import Schedule
    from django_q.scheduler import scheduler

    Schedule.objects.filter(name=SWEEP_SCHEDULE_NAME).update(next_run=timezone.now() - timedelta(minutes=1))
    scheduler(broker=get_broker())


def run_the_sweep() -> dict:
    """What a worker does with the queued sweep: take it out of the queue and run it in django-q2's
    own worker loop (whose ``pre_execute`` tells the task that the sweep's schedule queued it)."""
    from multiprocessing import Queue, Value

    from django_q.models import OrmQ
    from django_q.worker import worker

    [(row, task)] = [
        (row, task)
        for row in OrmQ.objects.order_by("id")
        if (task := SignedPackage.loads(row.payload))["func"] != "semantic.tasks.embed_field"
    ]
    assert (task["func"], task["args"], task["kwargs"]) == ("semantic.tasks.embed_pending", (), {})
    assert task["group"] == SWEEP_SCHEDULE_NAME
    row.delete()
    tasks, results = Queue(), Queue()
    for item in (task, "STOP"):
        tasks.put(item)
    worker(tasks, results, Value("f", -1))
    done = results.get()
    for queue in (tasks, results):
        queue.close()
        queue.join_thread()
    assert done["success"], done["result"]
    return done["result"]


def run(task: tuple[str, tuple]) -> dict:
    """What a worker does with a queued task: take it out of the queue and run it."""
    from django_q.models import OrmQ

    func, args = task
    OrmQ.objects.order_by("id").first().delete()
    if func == "math.floor":
        return {}
    assert func == "semantic.tasks.embed_field"
    return embed_field(*args)


def test_a_wakeup_embeds_its_share_and_queues_the_rest_behind_the_projects_task(fake_gemini, semantic_settings):
    semantic_settings(SYNC=False, BATCH_SIZE=BATCH)
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Backlog {i}", body="imported") for i in range(ROWS))
    pending = get_embedding_field(Article).pending()

    def project_queues_its_own_task(request):
        # After the run's first request (which woke another worker for the rest): a web request
        # of the project queues its own task, as async_task() does.
        if fake_gemini.request_count == 2:
            from django_q.tasks import async_task

            async_task("math.floor", 1.5, task_name="the project's own task")

    fake_gemini.on_request = project_queues_its_own_task

    summary = embed_field("testapp.Article", "embedding")

    assert summary["embedded"] == SHARE and summary["handed_over"] is True
    assert fake_gemini.request_count == HAND_OVER_BATCHES
    assert Article.objects.filter(pending).count() == ROWS - SHARE
    wakeup = ("semantic.tasks.embed_field", ("testapp.Article", "embedding"))
    # The project's task runs next; the rest of the backlog after it.
    assert queued() == [("math.floor", (1.5,)), wakeup]

    assert run(queued()[0]) == {}
    fake_gemini.on_request = None
    second = run(queued()[0])
    assert second["embedded"] == SHARE and queued() == [wakeup]
    last = run(queued()[0])
    assert last["embedded"] == ROWS - 2 * SHARE and "handed_over" not in last
    # Its first request may have woken another worker for the last row (unless this process sent a
    # wake-up less than WAKE_WINDOW ago): that one finds nothing left.
    assert queued() in ([], [wakeup])
    if queued():
        assert run(queued()[0])["embedded"] == 0 and queued() == []
    assert not Article.objects.filter(pending).exists()
    assert fake_gemini.request_count == HAND_OVER_BATCHES * 2 + 2


WAKEUP = ("semantic.tasks.embed_field", ("testapp.Article", "embedding"))


def import_backlog() -> None:
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Imported {i}", body="bulk") for i in range(ROWS))


def test_the_sweep_embeds_its_share_and_queues_the_rest_behind_the_projects_task(fake_gemini, semantic_settings):
    semantic_settings(SYNC=False, BATCH_SIZE=BATCH)
    import_backlog()  # bulk_create: no save announced these rows, only the sweep finds them
    pending = get_embedding_field(Article).pending()
    schedule_the_sweep()

    def project_queues_its_own_task(request):
        if fake_gemini.request_count == 2:
            from django_q.tasks import async_task

            async_task("math.floor", 1.5, task_name="the project's own task")

    fake_gemini.on_request = project_queues_its_own_task
    forget_wakeups()
    summary = run_the_sweep()["testapp.Article.embedding"]

    assert summary["embedded"] == SHARE and summary["handed_over"] is True
    assert fake_gemini.request_count == HAND_OVER_BATCHES
    assert Article.objects.filter(pending).count() == ROWS - SHARE
    assert queued() == [("math.floor", (1.5,)), WAKEUP]  # one continuation, behind the project's task

    fake_gemini.on_request = None
    assert run(queued()[0]) == {}
    assert run(queued()[0])["embedded"] == SHARE and queued() == [WAKEUP]
    assert run(queued()[0])["embedded"] == ROWS - 2 * SHARE
    while queued():  # a hand-on to idle workers, if one was sent: it finds nothing left
        assert run(queued()[0])["embedded"] == 0
    assert not Article.objects.filter(pending).exists()


def test_the_sweep_queues_no_continuation_when_a_wakeup_is_waiting(fake_gemini, semantic_settings):
    """A wake-up sent by another process (a web process's save) embeds every pending row of the
    field when its turn comes: a second one would make two chains of shares ahead of the project's tasks."""
    semantic_settings(SYNC=False, BATCH_SIZE=BATCH)
    import_backlog()
    Article.objects.create(title="Saved in a web process", body="")
    forget_wakeups()  # this worker did not send it
    schedule_the_sweep()
    assert [func for func, _ in queued()] == ["semantic.tasks.embed_field", "semantic.tasks.embed_pending"]
    summary = run_the_sweep()["testapp.Article.embedding"]

    assert summary["embedded"] == SHARE and "handed_over" not in summary
    assert queued() == [WAKEUP]


def test_embed_pending_called_from_code_still_embeds_everything(fake_gemini, semantic_settings):
    semantic_settings(SYNC=False, BATCH_SIZE=BATCH)
    import_backlog()

    summary = embed_pending("testapp.Article")["testapp.Article.embedding"]

    assert summary["embedded"] == ROWS and "handed_over" not in summary
    assert not Article.objects.filter(get_embedding_field(Article).pending()).exists()
    assert queued() == []
