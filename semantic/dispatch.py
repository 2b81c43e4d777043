"""Dispatch: the only module that queues work on django-q2.

A save does not hand its row to a worker. Pending rows are selectable in SQL
(``EmbeddingField.needs_embedding()``), and the worker fills each request with every
pending row it finds, so a save only needs a worker to *wake* soon. :func:`wake` sends
a wake-up task for a field when the caller's transaction commits, and sends none when
one is already on its way:

- **One per field per transaction.** The wake-up is an on-commit callback; a second save
  in the same transaction finds the first one's callback among the connection's and adds
  nothing. A rollback drops the callback, so a rolled-back save queues nothing.
- **One per field per process per** :data:`WAKE_WINDOW` **seconds.** A process that sent
  a wake-up for the field, or saw one still unclaimed in the queue, less than
  ``WAKE_WINDOW`` seconds ago sends nothing and makes no query. This is safe because a
  wake-up task keeps looking for pending rows until a scan that starts ``WAKE_WINDOW``
  seconds after the task started (:func:`semantic.tasks.embed_field`): it started after
  it was sent or seen waiting, so that last scan starts after any save that relied on it
  committed.
- **One waiting per field per process.** After the window, with django-q2's ORM broker,
  one statement on the caller's own connection inserts the wake-up into django-q2's queue
  table (``OrmQ``) only if this process's previous one is gone or already claimed by a
  worker. It never calls ``close_old_connections()`` as ``async_task()`` would, which with
  the default ``CONN_MAX_AGE = 0`` closed and reopened the connection on every save.
  The check runs after commit, so a skipped save's row was visible before any worker
  claimed the waiting wake-up.

Other brokers (Redis, SQS, ...) get ``async_task()`` after commit, coalesced per
transaction and per window.

A wake-up that cannot be sent (the broker down, the queue table locked for longer than
:data:`WAKEUP_LOCK_TIMEOUT` or not writable by the web role) is logged and dropped: the row is
saved, the project's own on-commit callbacks after it still run, and the sweep embeds the row.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.apps import apps
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, models, router, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from semantic import tenancy
from semantic.conf import semantic_settings as conf

logger = logging.getLogger("semantic")

#: How long a save's wake-up waits for a lock on django-q2's queue table before it gives up.
WAKEUP_LOCK_TIMEOUT = "2s"

#: Why a save's row waits for the sweep: its wake-up could not be sent.
WAKEUP_FAILED = (
    "Could not queue the wake-up task %r after a save (%s: %s); the row is saved, and the sweep embeds it "
    "within SEMANTIC['SWEEP_MINUTES'] minutes. Check that the worker's broker is up, that this "
    "process's database role may insert into django-q2's queue table, and that nothing holds that table locked."
)

#: The django-q2 schedule of the sweep that embeds rows no save announced.
SWEEP_SCHEDULE_NAME = "semantic.embed_pending"

#: django-q2 options of every task the app queues (the sweep's schedule passes them as ``q_options``).
#: ``save: False``: a successful run leaves no row in django-q2's "Successful tasks". Wake-ups come up
#: to once a second per process, and django-q2 prunes the oldest successes past ``save_limit`` across
#: all tasks, so saving theirs would evict the project's own results (``result(task_id)`` becomes
#: None), or, with ``save_limit`` 0, grow the table for ever. Nothing reads them: rows' states and
#: ``EmbeddingFailure`` report the work. A task that raises is still recorded under "Failed tasks".
TASK_OPTIONS: dict[str, Any] = {"save": False}

#: Seconds during which a process sends at most one wake-up per field, and a wake-up
#: task keeps looking for pending rows.
WAKE_WINDOW = 1.0

#: The clock saves measure :data:`WAKE_WINDOW` by (the task's own rescans, semantic/tasks.py, read
#: ``time.monotonic``). A module attribute, read at each call, so that tests can put one in its
#: place that moves only when they say (tests/test_dispatch.py).
clock: Callable[[], float] = time.monotonic

#: A wake-up in django-q2's ORM queue: its row's id and payload. The id alone is not enough: ids
#: are handed out again after the queue's sequence goes back (a restore, a failover to a replica
#: that lagged), and a row with that id may then be the project's own task.
Queued = tuple[int, str]

#: This process's last wake-up per (database, queue, task, arguments): its OrmQ id (None
#: on other brokers), when it was sent or seen waiting (:data:`clock`), and the
#: atomic block it was sent in, if any (run inside one, as a test's captured on-commit
#: callbacks are, the insert may yet be rolled back: the memory holds only while it is open).
_last_wakeup: dict[tuple[Any, ...], tuple[Queued | None, float, Any]] = {}
_lock = threading.Lock()


def wake_window() -> float:
    """:data:`WAKE_WINDOW`, or 0 when django-q2 runs tasks inline (``Q_CLUSTER["sync"]``).

    Inline, a wake-up runs at once and ends: a save cannot rely on it to come back.
    """
    from django_q.conf import Conf

    return 0.0 if Conf.SYNC else WAKE_WINDOW


def forget_wakeups(**kwargs: Any) -> None:
    """Forget this process's recent wake-ups, so the next save checks the queue again.

    Called when ``SEMANTIC`` or ``Q_CLUSTER`` change (the queue may be another one), and
    useful after purging django-q2's queue.
    """
    if kwargs.get("setting", "SEMANTIC") in ("SEMANTIC", "Q_CLUSTER"):
        with _lock:
            _last_wakeup.clear()


setting_changed.connect(forget_wakeups)


def queue_task(func: str, *args: Any, name: str) -> str:
    """Hand ``func(*args)`` to django-q2, on the cluster ``SEMANTIC["QUEUE"]`` names; returns the task id."""
    from django_q.tasks import async_task

    options: dict[str, Any] = {**TASK_OPTIONS, "task_name": name}
    if conf.QUEUE:
        options["cluster"] = conf.QUEUE
    return async_task(func, *args, **options)


def wake(func: str, *args: Any, name: str, using: str | None = None) -> None:
    """Have a worker run ``func(*args)`` soon after the current transaction on ``using`` commits.

    ``func`` must do whatever work is waiting when it runs (not what was waiting when
    it was queued), and keep looking for :func:`wake_window` seconds: calls that find a
    wake-up already registered in this transaction, sent or seen waiting by this process
    within the window, or still unclaimed in the queue, send nothing.
    """
    using = using or DEFAULT_DB_ALIAS
    connection = transaction.get_connection(using)
    key = (func, *args)
    if connection.in_atomic_block and any(
        getattr(callback, "wakeup_key", None) == key for _, callback, _ in connection.run_on_commit
    ):
        return
    transaction.on_commit(_WakeUp(key, name, using), using=using, robust=True)


class _WakeUp:
    """The on-commit callback of :func:`wake`; ``wakeup_key`` lets later saves find it."""

    def __init__(self, key: tuple[Any, ...], name: str, using: str) -> None:
        self.wakeup_key = key
        self.name = name
        self.using = using

    def __call__(self) -> None:
        # Not left to on_commit(robust=True): Django 5.2 logs its callbacks' errors by the callable's
        # __qualname__, which an instance has not, and that AttributeError failed the committed save
        # and dropped the project's callbacks queued after this one.
        try:
            self.send()
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]
            logger.warning(WAKEUP_FAILED, self.name, type(exc).__name__, reason)

    def send(self) -> None:
        from django_q.conf import Conf

        func, *args = self.wakeup_key
        memo = (self.using, conf.QUEUE or Conf.CLUSTER_NAME, *self.wakeup_key)
        now = clock()
        connection = transaction.get_connection(self.using)
        block = connection.atomic_blocks[-1] if connection.in_atomic_block else None
        with _lock:
            previous, seen, sent_in = _last_wakeup.get(memo, (None, float("-inf"), None))
            if now - seen < wake_window() and (sent_in is None or sent_in in connection.atomic_blocks):
                return
            _last_wakeup[memo] = (previous, now, block)
        waiting = None
        # The conditional insert is PostgreSQL's SQL; a queue on another database (a project's
        # SQLite test settings) gets django-q2's own insert.
        if orm_queue_alias() == self.using and connection.vendor == "postgresql":
            waiting = send_unless_waiting(func, *args, name=self.name, using=self.using, previous=previous)
        else:
            queue_task(func, *args, name=self.name)
        with _lock:
            _last_wakeup[memo] = (waiting, now, block)


def orm_queue_alias() -> str | None:
    """The database alias of django-q2's ORM broker, or None when another broker is in use."""
    from django_q.conf import Conf

    if Conf.BROKER_CLASS and Conf.BROKER_CLASS != "django_q.brokers.orm.ORM":
        return None
    if not Conf.BROKER_CLASS and (Conf.IRON_MQ or isinstance(Conf.SQS, dict)):
        return None
    return Conf.ORM or None


def send_unless_waiting(func: str, *args: Any, name: str, using: str, previous: Queued | None) -> Queued:
    """Queue ``func(*args)`` on the ORM broker unless the wake-up ``previous`` is still unclaimed.

    Returns the wake-up that is now waiting (new or ``previous``).
    """
    from django_q.conf import Conf
    from django_q.tasks import async_task

    broker = _conditional_orm_broker()(using, conf.QUEUE or Conf.CLUSTER_NAME, previous)
    options: dict[str, Any] = {**TASK_OPTIONS, "task_name": name, "broker": broker}
    if conf.QUEUE:
        options["cluster"] = conf.QUEUE
    async_task(func, *args, **options)
    return broker.waiting


@functools.cache
def _conditional_orm_broker() -> type:
    """django-q2's ORM broker, changed as :class:`_ConditionalInsert` says (built on first use:
    django-q2's broker module needs the app registry)."""
    from django_q.brokers.orm import ORM

    return type("ConditionalORM", (_ConditionalInsert, ORM), {})


class _ConditionalInsert:
    """Writes a task on a given connection, only when the ``previous`` wake-up is not waiting.

    Unlike django-q2's ORM broker, it never closes connections first: the caller's
    connection has just committed, so it is known to be alive.
    """

    list_key: str

    def __init__(self, using: str, list_key: str, previous: Queued | None) -> None:
        self.using = using
        self.previous = previous
        self.waiting: Queued | None = None
        super().__init__(list_key=list_key)  # type: ignore[call-arg]

    def get_connection(self, list_key: str | None = None) -> Any:
        from django_q.models import OrmQ

        return OrmQ.objects.using(self.using)

    def enqueue(self, task: str) -> int:
        from django_q.models import OrmQ

        connection = connections[self.using]
        quote = connection.ops.quote_name
        table, pk = quote(OrmQ._meta.db_table), quote(OrmQ._meta.pk.column)
        key, payload, lock = (quote(OrmQ._meta.get_field(f).column) for f in ("key", "payload", "lock"))
        now = timezone.now()
        previous_id, previous_payload = self.previous or (None, None)
        insert = (
            f"INSERT INTO {table} ({key}, {payload}, {lock}) SELECT %s, %s, %s WHERE NOT EXISTS "
            f"(SELECT 1 FROM {table} WHERE {pk} = %s AND {payload} = %s AND {lock} <= %s) RETURNING {pk}"
        )
        params = [self.list_key, task, now, previous_id, previous_payload, now]
        # A save's wake-up does not wait long for the queue table (a migration's ALTER TABLE, a
        # VACUUM FULL holds it): the row is saved, and the sweep embeds it. Sent in the same message,
        # the setting lasts as long as the insert's own transaction; not where the caller's is open.
        limited = not connection.in_atomic_block and not connection.features.uses_server_side_binding
        with connection.cursor() as cursor:
            if limited:
                cursor.execute(f"SELECT set_config('lock_timeout', %s, true); {insert}", [WAKEUP_LOCK_TIMEOUT, *params])
                cursor.cursor.nextset()
            else:
                cursor.execute(insert, params)
            row = cursor.fetchone()
        self.waiting = (row[0], task) if row else self.previous
        assert self.waiting is not None
        return self.waiting[0]


def enqueue(model: type[models.Model], field_name: str, pks: Sequence[Any], *, using: str | None = None) -> None:
    """Have these rows embedded once the current transaction commits.

    In ``SYNC`` mode they are embedded inline, on commit. Otherwise a worker is woken
    (:func:`semantic.dispatch.wake`): it embeds every pending row of the field, these
    among them, so saves that find a wake-up already waiting queue nothing.
    """
    label = model._meta.label
    if conf.SYNC:
        pks = list(pks)
        # The worker's own task, named as a worker finds it, run inline.
        task = import_string("semantic.tasks.embed_rows")
        # The schema that holds the rows now, as a queued task's (schemas per tenant): at commit the
        # connection may be in another (a loop over tenants inside one transaction).
        db = using or DEFAULT_DB_ALIAS
        schema = tenancy.home(model, db)

        def inline() -> None:
            with tenancy.in_schema(db, schema) as problem:
                if problem is None:
                    task(label, field_name, pks, using)

        transaction.on_commit(inline, using=using, robust=True)
        return
    wake(*_wakeup(model, field_name, using), name=f"semantic: embed {label}.{field_name}", using=using)


def _wakeup(model: type[models.Model], field_name: str, using: str | None) -> list[Any]:
    """The wake-up task of a field's rows in ``using``: its function and arguments."""
    # The database travels with the wake-up, so rows saved with .using("other") are embedded there,
    # and so does a tenant's schema (semantic.tenancy), so rows saved in it are embedded in it.
    args = [model._meta.label, field_name] + ([using] if using not in (None, "default") else [])
    return tenancy.carried("semantic.tasks.embed_field", args, using or DEFAULT_DB_ALIAS, model)


def hand_over(model: type[models.Model], field_name: str, *, using: str | None = None) -> None:
    """Queue the field's wake-up behind every task waiting now: a run that did its share
    (:data:`semantic.tasks.HAND_OVER_BATCHES`) hands the rest of the pending rows on, so that
    with one worker the project's own tasks queued meanwhile run in between.

    With the ORM broker, this process's earlier wake-up for the field still waiting (sent
    after the run's first request, for idle workers) is taken out first: it would otherwise
    run before the tasks queued after it.
    """
    from django_q.conf import Conf
    from django_q.models import OrmQ

    using = using or DEFAULT_DB_ALIAS
    func, *args = _wakeup(model, field_name, using)
    name = f"semantic: embed {model._meta.label}.{field_name}"
    if orm_queue_alias() != using:
        queue_task(func, *args, name=name)
        return
    memo = (using, conf.QUEUE or Conf.CLUSTER_NAME, func, *args)
    with _lock:
        previous = _last_wakeup.get(memo, (None,))[0]
    with transaction.atomic(using=using):
        if previous is not None:  # unless a worker claimed it (its lock then lies ahead)
            pk, payload = previous
            OrmQ.objects.using(using).filter(pk=pk, payload=payload, lock__lte=timezone.now()).delete()
        waiting = send_unless_waiting(func, *args, name=name, using=using, previous=None)
    with _lock:
        _last_wakeup[memo] = (waiting, clock(), None)


def hand_over_unless_queued(model: type[models.Model], field_name: str, *, using: str | None = None) -> bool:
    """:func:`hand_over`, for the sweep: unless the field's wake-up is in the queue already, waiting
    or running (sent by any process: a web process's save, a chain of hand-overs), which embeds
    every pending row of the field in its turn. Returns whether a wake-up was queued.

    Only django-q2's ORM broker can be asked; its tasks are signed, so each is read. Other brokers
    get the hand-over, and a sweep that finds a backlog still there adds one more chain.
    """
    from django_q.conf import Conf
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    using = using or DEFAULT_DB_ALIAS
    if orm_queue_alias() == using:
        func, *args = _wakeup(model, field_name, using)
        queue = OrmQ.objects.using(using).filter(key=conf.QUEUE or Conf.CLUSTER_NAME)
        for payload in queue.values_list("payload", flat=True):
            try:
                task = SignedPackage.loads(payload)
            except Exception:  # unsigned, or pickling what this code cannot import: not a wake-up (strings only)
                continue
            if task.get("func") == func and list(task.get("args", ())) == args:
                return False
    hand_over(model, field_name, using=using)
    return True


def install_sweep_schedule(**kwargs: Any) -> None:
    """Create (or update) the django-q2 schedule that runs the sweep.

    Its function is ``semantic.tasks.embed_pending``, the name every version's schedule has run,
    and it passes no argument: frozen like a migration, since a worker of the previous release,
    still running through a rolling deploy, takes the schedule's tasks too. A worker of this
    version runs it as :func:`semantic.tasks.sweep`
    (:func:`semantic.running_task.running_the_sweep`). Every ``migrate`` rewrites it (the
    same row each time), also a schedule that named ``semantic.tasks.sweep``.

    Deleted when ``SWEEP_MINUTES`` is None or this app's migrations are unapplied. Only on a
    database that holds django-q2's tables: a router may keep them off the one
    ``migrate --database=...`` just ran on, and ``migrate <one app>`` on a new database may
    not have created them yet (the next ``migrate`` that does installs the schedule).
    """
    forget_wakeups()  # a flush (TransactionTestCase) has emptied the queue the memory speaks of
    if not apps.is_installed("django_q"):
        return
    from django_q.models import Schedule

    using = kwargs.get("using", DEFAULT_DB_ALIAS)
    state = kwargs.get("apps", apps)  # the migrated state, as Django's own post_migrate handlers check it
    if not _app_migrated(state) and using == router.db_for_write(apps.get_model("semantic", "EmbeddingFailure")):
        # Unapplied where the app keeps its records (not another database that also had it),
        # whichever database django_q's tables are on.
        drop_queued_tasks()
    if not router.allow_migrate_model(using, Schedule):
        return
    try:
        state.get_model("django_q", "Schedule")
    except LookupError:
        return
    if conf.SWEEP_MINUTES is None or not _app_migrated(state):
        # Also after ``migrate semantic zero``, the step before taking the app out of INSTALLED_APPS:
        # a schedule left behind would have every run kill the worker that imports semantic.tasks.
        Schedule.objects.using(using).filter(name=SWEEP_SCHEDULE_NAME).delete()
        return
    Schedule.objects.using(using).update_or_create(
        name=SWEEP_SCHEDULE_NAME,
        defaults={
            "func": "semantic.tasks.embed_pending",
            "schedule_type": Schedule.MINUTES,
            "minutes": conf.SWEEP_MINUTES,
            "repeats": -1,
            "cluster": conf.QUEUE,
            "kwargs": repr({"q_options": {**TASK_OPTIONS, "group": SWEEP_SCHEDULE_NAME}}),
        },
    )


def drop_queued_tasks() -> None:
    """Delete this app's tasks still queued in django-q2's ORM broker (``migrate semantic zero``).

    A wake-up queued before the fields were removed, and not yet run by a worker (one that
    was stopped, or behind), would otherwise kill every worker that takes it once the app
    is out of INSTALLED_APPS. The queue is on the broker's database (``Q_CLUSTER["orm"]``),
    whichever one ``migrate`` ran on. A Redis or other broker's queue is not in a database:
    its tasks are dropped with a warning while the app is still installed (README "Removing
    the app"). Reading each task's payload unpickles it, importing its function's module.
    """
    from django_q.models import OrmQ

    using = orm_queue_alias()
    if using is None:
        return
    stale = []
    try:
        with transaction.atomic(using=using):  # a savepoint, should a caller's transaction be open there
            for task in OrmQ.objects.using(using).iterator():
                try:
                    func = task.func()
                except Exception:  # noqa: BLE001 - another app's payload, signed with another key: not ours to judge
                    continue
                if isinstance(func, str) and func.startswith("semantic."):
                    stale.append(task.pk)
            OrmQ.objects.using(using).filter(pk__in=stale).delete()
    except DatabaseError:  # django_q's tables are not (yet) on that database: no queue to clean
        return


def _app_migrated(state: Any) -> bool:
    """Whether this app's tables are in the migrated ``state`` (not after ``migrate semantic zero``)."""
    try:
        state.get_app_config("semantic")
    except LookupError:
        return False
    return True
