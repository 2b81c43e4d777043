"""The django-q2 task this process is running: when its runs must stop sending, and
whether the sweep's schedule queued it.

django-q2's ``pre_execute`` and ``post_execute_in_worker`` signals mark the task's start
and end (:func:`watch_tasks`); between them :func:`run_deadline` keeps a run inside the
task's timeout, and :func:`running_the_sweep` tells the sweep's scheduled runs from calls
in code. Sending work to django-q2 is :mod:`semantic.dispatch`.
"""

from __future__ import annotations

import time
from typing import Any

from django.apps import apps

from semantic.conf import semantic_settings as conf
from semantic.dispatch import SWEEP_SCHEDULE_NAME

#: Seconds of a django-q2 task kept back from its runs: the last request (up to ``TIMEOUT``)
#: and the writing of what it answered must end before ``Q_CLUSTER["timeout"]`` kills the task.
STORE_SECONDS = 10.0

#: When runs in the django-q2 task this process is running must stop sending (``time.monotonic()``).
_run_deadline: float | None = None

#: The group of the django-q2 task this process is running (None outside one): django-q2 gives a
#: scheduled task its schedule's name as its group, which is how :func:`running_the_sweep` knows it.
_run_group: str | None = None

#: The dotted name of the django-q2 task this process is running, if it is named so (None outside one).
_run_func: str | None = None


def run_deadline() -> float | None:
    """When a run in the django-q2 task this process is running must send no more requests
    (a ``time.monotonic()`` reading); None outside a task, or when tasks have no timeout.

    django-q2 kills a task that outlives ``Q_CLUSTER["timeout"]``, losing what it was doing
    and, with the worker, a loaded local model. A run that stops before then keeps what it
    stored and leaves the rest to the next run. Kept back: ``TIMEOUT`` (the last request)
    and :data:`STORE_SECONDS`, so a request sent just before the deadline is answered (or
    abandoned) and written before the kill. A timeout not longer than that keeps back half
    of it (a last request may then be killed: :func:`task_time_problem`).
    """
    return _run_deadline


#: semantic.W008: django-q2's timeout leaves no room for one request and its writing.
TASK_TIME_TOO_SHORT = (
    'Q_CLUSTER["timeout"] is {timeout} s, but one embedding request may take SEMANTIC["TIMEOUT"] ({request} s) '
    "and writing its answer up to {store} s more: django-q2 may kill a run's task with a request in flight, "
    "so a slow or failing API is never recorded as failing, and the task is retried by django-q2."
)
TASK_TIME_HINT = 'Set Q_CLUSTER["timeout"] above {needed} s (and "retry" above that), or lower SEMANTIC["TIMEOUT"].'


def task_time_problem() -> str | None:
    """Why a run in a django-q2 task (on the app's cluster) cannot send a request safely, or None."""
    from django_q.conf import Conf

    timeout = Conf.TIMEOUT
    if not timeout or timeout < 0 or timeout > conf.TIMEOUT + STORE_SECONDS:
        return None
    return TASK_TIME_TOO_SHORT.format(timeout=timeout, request=conf.TIMEOUT, store=STORE_SECONDS)


def running_the_sweep() -> bool:
    """Whether the django-q2 task this process is running was queued by the sweep's schedule.

    The schedule names ``semantic.tasks.embed_pending``, as every earlier version's did, and passes
    it nothing an earlier version's ``embed_pending`` would refuse: workers still running the
    previous release during a rolling deploy take the sweep too (and run their own, unbounded).
    So the current one tells its scheduled runs from calls in code by the task's group.
    """
    return _run_group == SWEEP_SCHEDULE_NAME


def running_task_of(func: str) -> bool:
    """Whether the django-q2 task this process is running is ``func`` itself (a schedule's, say),
    rather than a task that calls it: such a task starts with the database connection as the
    task before left it (with django-tenants, perhaps in a tenant's schema)."""
    return _run_func == func


def task_started(sender: Any = None, **kwargs: Any) -> None:
    """django-q2's ``pre_execute``: the task's clock starts now (its timeout's follows at once)."""
    from django_q.conf import Conf

    global _run_deadline, _run_group, _run_func
    _run_group = (kwargs.get("task") or {}).get("group")
    func = (kwargs.get("task") or {}).get("func")
    _run_func = func if isinstance(func, str) else None
    timeout = Conf.TIMEOUT
    if not timeout or timeout < 0:
        _run_deadline = None
        return
    keep = conf.TIMEOUT + STORE_SECONDS
    _run_deadline = time.monotonic() + timeout - (keep if keep < timeout else timeout / 2)


def task_ended(sender: Any = None, **kwargs: Any) -> None:
    """django-q2's ``post_execute_in_worker``: what runs next in this process is no task's."""
    global _run_deadline, _run_group, _run_func
    _run_deadline = _run_group = _run_func = None


def watch_tasks() -> None:
    """Follow the django-q2 tasks this process runs, for :func:`run_deadline`."""
    if not apps.is_installed("django_q"):
        return
    from django_q.signals import post_execute_in_worker, pre_execute

    pre_execute.connect(task_started, dispatch_uid="semantic.task_started")
    post_execute_in_worker.connect(task_ended, dispatch_uid="semantic.task_ended")
