"""Dispatch: the only module that talks to django-q2.

A save does not hand its row to a worker. Pending rows are selectable in SQL
(``EmbeddingField.needs_embedding()``), and the worker's task fills each request with
every pending row it finds, so a save only needs a worker to *wake* soon. :func:`wake`
sends a wake-up task for a field when the caller's transaction commits, and sends none
when one is already waiting:

- **One per field per transaction.** The wake-up is an on-commit callback; a second save
  in the same transaction finds the first one's callback among the connection's and adds
  nothing. A rollback drops the callback, so a rolled-back save queues nothing.
- **One waiting per field (per process).** With django-q2's ORM broker the wake-up is
  written into its queue table (``OrmQ``) by one statement on the caller's own
  connection, which inserts only when this process's previous wake-up for the field is
  gone or already claimed by a worker. ``async_task()`` would first call django-q2's
  ``close_old_connections()``, which with the default ``CONN_MAX_AGE = 0`` closes and
  reopens the database connection on every save.
- **Decided after commit.** A wake-up is skipped only if one is still unclaimed after
  the saved rows became visible. A worker claims a task before it runs it and looks for
  pending rows after that, so the skipped rows are found by the waiting wake-up; a row
  committed after a worker claimed the last wake-up gets a wake-up of its own. Deciding
  inside the transaction would lose rows when a worker claimed and finished the waiting
  wake-up before the transaction committed.

Other brokers (Redis, SQS, ...) get ``async_task()`` after commit, one per field per
transaction.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from semantic.conf import semantic_settings as conf

#: This process's last wake-up per (database, queue, task, arguments): its OrmQ id.
_last_wakeup: dict[tuple[Any, ...], int] = {}
_lock = threading.Lock()


def queue_task(func: str, *args: Any, name: str) -> str:
    """Hand ``func(*args)`` to django-q2, on the cluster ``SEMANTIC["QUEUE"]`` names; returns the task id."""
    from django_q.tasks import async_task

    options: dict[str, Any] = {"task_name": name}
    if conf.QUEUE:
        options["cluster"] = conf.QUEUE
    return async_task(func, *args, **options)


def wake(func: str, *args: Any, name: str, using: str | None = None) -> None:
    """Have a worker run ``func(*args)`` soon after the current transaction on ``using`` commits.

    ``func`` must do whatever work is waiting when it runs (not what was waiting when
    it was queued): calls that find a wake-up already registered in this transaction,
    or still unclaimed in the queue, send nothing.
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
        func, *args = self.wakeup_key
        if orm_queue_alias() == self.using:
            send_unless_waiting(func, *args, name=self.name, using=self.using)
        else:
            queue_task(func, *args, name=self.name)


def orm_queue_alias() -> str | None:
    """The database alias of django-q2's ORM broker, or None when another broker is in use."""
    from django_q.conf import Conf

    if Conf.BROKER_CLASS and Conf.BROKER_CLASS != "django_q.brokers.orm.ORM":
        return None
    if not Conf.BROKER_CLASS and (Conf.IRON_MQ or isinstance(Conf.SQS, dict)):
        return None
    return Conf.ORM or None


def send_unless_waiting(func: str, *args: Any, name: str, using: str) -> int:
    """Queue ``func(*args)`` on the ORM broker unless this process's last one is still unclaimed.

    Returns the OrmQ id of the wake-up that is now waiting (new or old).
    """
    from django_q.conf import Conf
    from django_q.tasks import async_task

    list_key = conf.QUEUE or Conf.CLUSTER_NAME
    memo = (using, list_key, func, *args)
    with _lock:
        previous = _last_wakeup.get(memo)
    broker = _conditional_orm_broker()(using, list_key, previous)
    options: dict[str, Any] = {"task_name": name, "broker": broker}
    if conf.QUEUE:
        options["cluster"] = conf.QUEUE
    async_task(func, *args, **options)
    with _lock:
        _last_wakeup[memo] = broker.waiting
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

    def __init__(self, using: str, list_key: str, previous: int | None) -> None:
        self.using = using
        self.previous = previous
        self.waiting: int = 0
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
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({key}, {payload}, {lock}) SELECT %s, %s, %s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {pk} = %s AND {lock} <= %s) RETURNING {pk}",
                [self.list_key, task, now, self.previous, now],
            )
            row = cursor.fetchone()
        self.waiting = row[0] if row else self.previous
        return self.waiting
