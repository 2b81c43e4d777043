"""Wake-ups: what saves put into django-q2's queue (its ORM broker, on the test database).

No worker runs here; test_worker.py has the end-to-end runs with a real ``qcluster``.
"""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from semantic import dispatch
from semantic.dispatch import WAKE_WINDOW, forget_wakeups, hand_over, queue_task
from semantic.embedder import Embedder
from semantic.models import EmbeddingFailure
from semantic.tasks import embed_field
from tests.fake_gemini import api_error
from tests.testapp.models import Article, Document

pytestmark = pytest.mark.django_db(transaction=True)


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        # Whole seconds from zero: advancing by WAKE_WINDOW lands exactly on the window's end, which
        # a real reading plus 1.0 can miss by float rounding.
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """The clock the wake window is measured by, standing still unless a test advances it: saves
    are "within the window" however slow the machine, and "past it" takes no sleeping."""
    clock = Clock()
    forget_wakeups()  # times read from the real clock mean nothing to this one, nor this one's to the next test's
    monkeypatch.setattr(dispatch, "clock", clock)
    yield clock
    forget_wakeups()


@pytest.fixture
def queued(semantic_settings):
    """Saves queue wake-ups instead of embedding inline; returns the queued tasks, oldest first."""
    semantic_settings(SYNC=False)

    def tasks():
        return [SignedPackage.loads(q.payload) for q in OrmQ.objects.order_by("pk")]

    return tasks


def claim_all():
    """What a qcluster's pusher does before a task runs: take every waiting task."""
    broker = get_broker()
    while broker.dequeue():
        pass


def test_a_save_queues_a_wakeup_for_its_field_with_identifiers_only(queued, fake_gemini):
    Article.objects.create(title="Wake up", body="")
    [task] = queued()
    assert task["func"] == "semantic.tasks.embed_field"
    assert task["args"] == ("testapp.Article", "embedding")
    assert task["name"] == "semantic: embed testapp.Article.embedding"
    assert fake_gemini.request_count == 0


def test_saves_in_one_transaction_queue_one_wakeup_per_field(queued):
    with transaction.atomic():
        for i in range(10):
            Article.objects.create(title=f"Same transaction {i}", body="")
            Document.objects.create(title=f"Document {i}", text="body")
        assert OrmQ.objects.count() == 0  # nothing before commit
    assert sorted(task["args"] for task in queued()) == [
        ("testapp.Article", "embedding"),
        ("testapp.Document", "content"),
        ("testapp.Document", "summary"),
    ]


def test_a_transaction_holds_one_wakeup_per_field_however_many_rows_it_saves(queued):
    """A transaction saving 10,000 rows keeps one callback, not 10,000."""
    with transaction.atomic():
        for i in range(10):
            Article.objects.create(title=f"Same transaction {i}", body="")
        assert len(connection.run_on_commit) == 1
    assert len(queued()) == 1


def test_saves_in_separate_transactions_queue_nothing_while_a_wakeup_waits(queued, clock):
    for i in range(20):
        Article.objects.create(title=f"Own transaction {i}", body="")
    for i in range(3):
        clock.advance(WAKE_WINDOW)  # past the window, the process checks the queue: one still waits
        with transaction.atomic():
            Article.objects.create(title=f"Atomic {i}", body="")
    assert len(queued()) == 1


def test_a_save_soon_after_a_wakeup_was_sent_makes_no_query(queued):
    """For ``WAKE_WINDOW`` seconds the task sent will look again itself (test_worker.py)."""
    Article.objects.create(title="First", body="")
    with CaptureQueriesContext(connection) as queries:
        Article.objects.create(title="Right after", body="")
    assert [q["sql"] for q in queries.captured_queries if "django_q" in q["sql"]] == []
    assert len(queued()) == 1


def test_a_save_after_a_worker_claimed_the_wakeup_queues_a_new_one(queued, clock):
    """The claimed task may already have looked for pending rows: this row needs a task of its own."""
    Article.objects.create(title="First", body="")
    claim_all()
    clock.advance(WAKE_WINDOW)  # within the window, the claimed task itself looks again (test_worker.py)
    Article.objects.create(title="Saved while the worker is busy", body="")
    Article.objects.create(title="And another", body="")
    tasks = queued()
    assert len(tasks) == 2
    assert OrmQ.objects.filter(lock__lte=OrmQ.objects.latest("pk").lock).count() == 1


def test_a_wakeup_that_cannot_be_queued_fails_no_save_and_no_callback_after_it(queued, caplog):
    """The broker refuses (a web role without INSERT on django-q2's table, a Redis that is down):
    the row is saved, the project's own on-commit callbacks still run, the log says why and what
    happens next (the sweep)."""
    refuse = "BEGIN RAISE EXCEPTION 'permission denied for table django_q_ormq'; END"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ {refuse} $$")
        cursor.execute("CREATE TRIGGER test_refuse BEFORE INSERT ON django_q_ormq EXECUTE FUNCTION test_refuse()")
    ran = []
    try:
        with transaction.atomic():
            Article.objects.create(title="Saved", body="")
            transaction.on_commit(lambda: ran.append("the project's callback"))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_refuse ON django_q_ormq; DROP FUNCTION test_refuse()")
    assert ran == ["the project's callback"]
    assert Article.objects.filter(title="Saved").exists() and queued() == []
    (record,) = [r for r in caplog.records if r.name == "semantic"]
    assert record.getMessage().startswith(
        "Could not queue the wake-up task 'semantic: embed testapp.Article.embedding' after a save "
        "(ProgrammingError: permission denied "
        "for table django_q_ormq); the row is saved, and the sweep embeds it"
    ), record.getMessage()


def test_a_save_waits_a_bounded_time_for_a_locked_queue_table(queued, caplog):
    """A migration's ALTER TABLE or a VACUUM FULL holds django-q2's queue table: the save's wake-up
    gives up after WAKEUP_LOCK_TIMEOUT rather than hold the request until the lock goes."""
    import psycopg

    with connection.cursor() as cursor:  # what ends the wait without the limit, so that a failure does not hang
        cursor.execute("SET statement_timeout = '20s'")
    holder = psycopg.connect(**connection.get_connection_params())
    try:
        holder.execute("LOCK TABLE django_q_ormq IN ACCESS EXCLUSIVE MODE")
        Article.objects.create(title="Saved while the queue is locked", body="")
    finally:
        holder.rollback()
        holder.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")
    assert Article.objects.filter(title="Saved while the queue is locked").exists() and queued() == []
    (record,) = [r for r in caplog.records if r.name == "semantic"]
    assert "(OperationalError: canceling statement due to lock timeout)" in record.getMessage(), record.getMessage()
    with connection.cursor() as cursor:  # the limit was the insert's alone
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone() == ("0",)


@pytest.mark.parametrize("then", ["save", "hand over"])
def test_a_task_given_a_remembered_wakeups_id_again_is_not_taken_for_it(queued, clock, then):
    """The queue's ids go back after a restore from a dump or a failover to a replica that lagged:
    the id this process remembers for its wake-up may then be the project's own task's, which
    must neither stand in for a wake-up (a save's) nor be deleted (a hand-over's)."""
    from django_q.tasks import async_task

    Article.objects.create(title="First", body="")
    (wakeup,) = OrmQ.objects.all()
    OrmQ.objects.all().delete()  # run, and then the database restored from before it
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('django_q_ormq', 'id'), %s, false)", [wakeup.pk])
    async_task("math.floor", 1.5, task_name="the project's task")
    assert OrmQ.objects.get().pk == wakeup.pk
    if then == "save":
        clock.advance(WAKE_WINDOW)  # past the window, the process looks for its wake-up in the queue
        Article.objects.create(title="Saved after the restore", body="")
    else:
        hand_over(Article, "embedding")  # takes its wake-up out of the queue, and queues one behind the tasks
    assert [task["name"] for task in queued()] == ["the project's task", "semantic: embed testapp.Article.embedding"]
    assert OrmQ.objects.filter(pk=wakeup.pk).exists()


def test_a_rolled_back_transaction_leaves_no_wakeup(queued):
    with pytest.raises(RuntimeError), transaction.atomic():
        Article.objects.create(title="Rolled back", body="")
        raise RuntimeError
    assert queued() == []


def test_a_rolled_back_savepoint_leaves_no_wakeup(queued):
    with transaction.atomic():
        Document.objects.create(title="Kept", text="")
        with pytest.raises(RuntimeError), transaction.atomic():
            Article.objects.create(title="Rolled back", body="")
            raise RuntimeError
    assert {task["args"][0] for task in queued()} == {"testapp.Document"}


def test_a_save_after_a_rolled_back_savepoint_still_queues_a_wakeup(queued):
    """The savepoint took its wake-up with it; the later save of the same field needs one."""
    with transaction.atomic():
        with pytest.raises(RuntimeError), transaction.atomic():
            Article.objects.create(title="Rolled back", body="")
            raise RuntimeError
        Article.objects.create(title="Kept", body="")
    assert [task["args"] for task in queued()] == [("testapp.Article", "embedding")]


def test_sync_mode_embeds_on_commit_and_queues_nothing(semantic_settings, fake_gemini):
    semantic_settings(SYNC=True)
    with transaction.atomic():
        for i in range(3):
            Article.objects.create(title=f"Inline {i}", body="")
        assert fake_gemini.request_count == 0
    assert not Article.objects.filter(embedding__isnull=True).exists()
    assert OrmQ.objects.count() == 0


def test_with_django_q_running_tasks_inline_every_save_is_embedded(semantic_settings, monkeypatch, fake_gemini):
    """Q_CLUSTER["sync"]: a wake-up runs on commit and ends, so the next save cannot skip its own."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)  # django-q2 reads Q_CLUSTER once, at import
    semantic_settings(SYNC=False)
    for i in range(3):
        Article.objects.create(title=f"Inline through django-q2 {i}", body="")
    assert not Article.objects.filter(embedding__isnull=True).exists()
    assert fake_gemini.request_count == 3
    assert OrmQ.objects.count() == 0


class OtherBroker(ORM):
    """django-q2's ORM broker under another name: what dispatch sees of Redis, SQS and the rest."""


def test_other_brokers_get_async_task_once_per_transaction_and_window(queued, clock, monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "BROKER_CLASS", f"{__name__}.OtherBroker")
    with transaction.atomic():
        for i in range(10):
            Article.objects.create(title=f"Other broker {i}", body="")
    for i in range(5):
        Article.objects.create(title=f"Other broker, own transaction {i}", body="")
    assert [task["args"] for task in queued()] == [("testapp.Article", "embedding")]
    clock.advance(WAKE_WINDOW)  # past the window another broker's queue cannot be asked: send again
    Article.objects.create(title="After the window", body="")
    assert len(queued()) == 2


def test_queue_task_is_still_importable_from_tasks(queued):
    from semantic import tasks

    assert tasks.queue_task is queue_task
    queue_task("semantic.tasks.embed_pending", "testapp.Article", name="semantic: embed pending rows")
    [task] = queued()
    assert (task["func"], task["args"]) == ("semantic.tasks.embed_pending", ("testapp.Article",))


def test_a_wakeup_with_rows_left_after_a_request_wakes_one_more_worker(queued, fake_gemini, semantic_settings):
    """A burst of saves is one wake-up: its task hands work on so that idle workers join in."""
    semantic_settings(SYNC=False, BATCH_SIZE=10)
    forget_wakeups()
    Article.objects.bulk_create(Article(title=f"Burst {i}", body="") for i in range(30))  # no wake-up of its own
    embed_field("testapp.Article", "embedding")  # what the woken worker runs; no other worker here
    [handed_on] = queued()
    assert (handed_on["func"], handed_on["args"]) == ("semantic.tasks.embed_field", ("testapp.Article", "embedding"))
    assert fake_gemini.request_count == 3 and len(set(fake_gemini.texts())) == 30

    OrmQ.objects.all().delete()
    Article.objects.bulk_create(Article(title=f"Small {i}", body="") for i in range(5))
    forget_wakeups()
    embed_field("testapp.Article", "embedding")
    assert queued() == []  # one request did it all: nobody else to wake

    # A request that embedded nothing (the API down) hands nothing on: the trouble would go round for ever.
    Article.objects.bulk_create(Article(title=f"Outage {i}", body="") for i in range(30))
    fake_gemini.fail_every(503, body=api_error(503, "The service is currently unavailable.", "UNAVAILABLE"))
    forget_wakeups()
    embed_field("testapp.Article", "embedding")
    assert queued() == []


def test_a_wakeup_whose_run_stopped_does_not_scan_again(queued, fake_gemini, semantic_settings):
    """The API failing stops the run after one batch; a second scan in the wake window would meet
    the same API with the next batch. The rows left wait for the sweep, without failure records."""
    semantic_settings(SYNC=False, BATCH_SIZE=10)
    forget_wakeups()
    Article.objects.bulk_create(Article(title=f"Outage {i}", body="") for i in range(30))
    fake_gemini.fail_every(503, body=api_error(503, "The service is currently unavailable.", "UNAVAILABLE"))
    result = embed_field("testapp.Article", "embedding")
    assert fake_gemini.request_count == 4  # MAX_ATTEMPTS for one batch, then no other scan
    assert result["failed"] == 10 and result["stopped"].startswith(Embedder.API_FAILING.split("{")[0])
    assert EmbeddingFailure.objects.count() == 10
    assert queued() == []


def test_a_wakeup_rolled_back_with_the_test_that_captured_it_is_sent_again(queued, django_capture_on_commit_callbacks):
    """Two tests of a TestCase, less than WAKE_WINDOW apart: each runs in a transaction rolled
    back at its end, and executes its captured on-commit callbacks inside it."""
    for title in ("first test", "second test"):
        with transaction.atomic():
            with django_capture_on_commit_callbacks(execute=True):
                Article.objects.create(title=title, body="")
            assert len(queued()) == 1
            transaction.set_rollback(True)
    assert queued() == []


def test_a_flush_forgets_the_wakeups_it_removed(queued):
    """A TransactionTestCase flushes the database after each test, queue included."""
    from django.core.management import call_command

    Article.objects.create(title="first test", body="")
    assert len(queued()) == 1
    call_command("flush", interactive=False, verbosity=0)
    Article.objects.create(title="second test", body="")
    assert len(queued()) == 1


def test_the_apps_tasks_leave_the_projects_own_results_to_django_q(semantic_settings, monkeypatch, fake_gemini):
    """django-q2 keeps ``save_limit`` successes across all tasks and deletes the oldest: a
    wake-up per save-second, stored, would soon push out the result the project waits for."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.models import Schedule, Success
    from django_q.scheduler import scheduler
    from django_q.tasks import async_task, result

    monkeypatch.setattr(Conf, "SYNC", True)  # django-q2 runs and stores each task inline, as its worker would
    monkeypatch.setattr(Conf, "SAVE_LIMIT", 3)
    semantic_settings(SYNC=False)
    own = async_task("math.floor", 2.5)
    for i in range(10):
        Article.objects.create(title=f"One wake-up each {i}", body="")
    Schedule.objects.filter(name="semantic.embed_pending").update(next_run=timezone.now() - timedelta(minutes=1))
    scheduler(broker=get_broker())
    assert Schedule.objects.get(name="semantic.embed_pending").task  # the sweep ran
    assert fake_gemini.request_count == 10
    assert result(own) == 2
    assert list(Success.objects.values_list("func", flat=True)) == ["math.floor"]
