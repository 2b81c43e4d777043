"""What the django-q2 worker runs: the tasks that dispatch names by their dotted paths.

Tasks receive identifiers only (``"app_label.Model"``, field name, primary keys),
never text or keys, so nothing sensitive is stored in django-q2's queue or results.
How saves hand work to them is :mod:`semantic.hooks` and :mod:`semantic.dispatch`.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.apps import apps
from django.db import models, router, transaction

from semantic import definitions, tenancy
from semantic.backends import redact_keys
from semantic.dispatch import SWEEP_SCHEDULE_NAME as SWEEP_SCHEDULE_NAME
from semantic.dispatch import enqueue as enqueue
from semantic.dispatch import hand_over, hand_over_unless_queued, queue_task, wake_window
from semantic.dispatch import install_sweep_schedule as install_sweep_schedule
from semantic.embedder import Embedder
from semantic.fields import EmbeddingField
from semantic.hooks import embedding_suspended as embedding_suspended
from semantic.hooks import suspend_embedding as suspend_embedding
from semantic.passage_rows import sweep_orphans
from semantic.registry import get_embedding_field, iter_fields
from semantic.rows import pending_keys, sweep_orphan_failures
from semantic.running_task import running_the_sweep
from semantic.schema import schema_problem
from semantic.writer import Outcome

logger = logging.getLogger("semantic")

#: Logged, with the field and the reason, for a field the sweep leaves out: its table does not fit.
SWEEP_SKIPPED = "Sweep skipped %s: %s"
#: A field's sweep that failed; the other fields' still run. The next sweep tries it again.
SWEEP_FAILED = "The sweep of this field failed ({error}); the other fields were swept, and the next sweep tries again."

#: Logged, once per task, for a task naming a model or field that is gone: queued before a deploy
#: removed or renamed it. Raising would leave django-q2 retrying it every ``retry`` seconds for ever.
TASK_DROPPED = (
    "Dropped the task %s for %s.%s: %s It was queued before the model or field was removed or renamed, "
    "so there is nothing left for it to embed; rows of a renamed field are found by the sweep."
)

#: Logged instead of :data:`TASK_DROPPED` when the database records the field this process lacks:
#: a deploy added it, and this worker, started before, was not restarted yet.
TASK_FOR_NEWER_CODE = (
    "Dropped the task %s for %s.%s: %s But the database records that field: the code that has it ran migrate, "
    "and this worker is older than that code. Restart it (qcluster) so that it loads the current code; "
    "the rows this task was for are embedded by the next sweep of a current worker."
)

#: Logged for a task queued in a tenant's schema that names a task this worker lacks (a newer release's).
UNKNOWN_TASK = (
    "Dropped the task %s queued in the schema %r: this worker has no such task. Restart it (qcluster) "
    "so that it loads the current code; the rows are embedded by the next sweep of a current worker."
)

#: Seconds between a wake-up task's scans for pending rows within ``WAKE_WINDOW``.
RESCAN_EVERY = 0.25

#: Requests' worth of rows (``BATCH_SIZE``) a wake-up task embeds before it queues the rest as
#: a new task behind those waiting (:func:`semantic.dispatch.hand_over`). Without a bound, one
#: save after an import held a project's only worker (README's ``"workers": 1``), and a graceful
#: ``qcluster`` stop, until the whole backlog was embedded.
HAND_OVER_BATCHES = 10


def embed_rows(
    label: str, field_name: str, pks: Sequence[Any] | None = None, using: str | None = None
) -> dict[str, Any]:
    """Worker task: embed the pending rows among ``pks`` (and others, to fill requests),
    in database ``using`` (the one the rows were saved to)."""
    target = _target("embed_rows", label, field_name)
    if target is None:
        return {}
    model, field = target
    return Embedder(model, field, using=using).run(pks).as_dict()


def embed_field(label: str, field_name: str, using: str | None = None) -> dict[str, Any]:
    """Worker task behind wake-ups: embed the field's pending rows, and keep looking a while.

    Saves skip their wake-up when their process sent one (or saw one waiting) less than
    ``WAKE_WINDOW`` seconds ago, trusting it to find their rows. So the task scans again
    until one scan starts ``WAKE_WINDOW`` seconds after the task did: that scan sees
    every row whose save relied on this task.

    A burst of saves wakes one worker; when its first request embedded rows and more are
    left, it wakes another, which does the same, so idle workers (on any machine) share the work.
    After :data:`HAND_OVER_BATCHES` requests' worth of rows, or at its django-q2 deadline, a task
    that embedded rows queues the rest as a new task behind the others waiting, and ends.
    """
    target = _target("embed_field", label, field_name)
    if target is None:
        return {}
    model, field = target
    started = time.monotonic()
    window = wake_window()
    total: dict[str, Any] = {}
    handed_on = not window  # django-q2 running tasks inline: no other worker to hand on to
    visited = scanned = 0

    def hand_on(outcome: Any, rows: int) -> None:
        # A burst of saves is one wake-up; more than a request's worth of rows left after
        # the first request wakes one more worker, which does the same: idle workers join
        # in (the rows' advisory locks share them out) instead of one doing it all.
        # Only after a request that embedded rows: one that failed, paused or found its
        # rows taken would hand the same trouble on, and the chain would never end.
        nonlocal handed_on, scanned
        scanned = rows
        if not handed_on:
            handed_on = True
            progressed = (outcome.embedded or outcome.cleared) and not outcome.stopped
            if progressed and pending_keys(model, field, using, cap=0) != []:
                enqueue(model, field_name, [], using=using)

    while True:
        scan_started = time.monotonic()
        embedder = Embedder(model, field, using=using)
        share = HAND_OVER_BATCHES * embedder.batch_size
        scanned = 0
        outcome = embedder.run(on_batch=hand_on, limit=share - visited)
        visited += scanned
        for key, value in outcome.as_dict().items():
            if key not in total:
                total[key] = value
            elif isinstance(value, list):
                total[key] += [item for item in value if item not in total[key]]
            elif isinstance(value, int | float):
                total[key] += value
            elif value is not None:  # why a scan stopped early: the latest reason
                total[key] = value
        if outcome.stopped in (None, Embedder.OUT_OF_TIME) and (visited >= share or outcome.stopped) and window:
            # Its share done (or its time up with the API answering): the rest waits its turn.
            if _rest_to_hand_over(model, field, using, outcome.stopped, total["embedded"] or total["cleared"]):
                hand_over(model, field_name, using=using)
                total["handed_over"] = True
            return total
        if outcome.stopped or scan_started - started >= window:
            # A stopped scan met what the next one would meet too (the API failing, a key to
            # fix, a Batch API job holding the rows): the rows left wait for the sweep.
            return total
        time.sleep(min(RESCAN_EVERY, max(0.0, started + window - time.monotonic())))


def embed_chunk(label: str, field_name: str, pks: Sequence[Any], batch_size: int | None = None) -> dict[str, Any]:
    """Worker task for ``semantic_embed --queue``: exactly these rows, no others.

    Chunks are disjoint, so workers share a backfill without waiting for each other.
    """
    target = _target("embed_chunk", label, field_name)
    if target is None:
        return {}
    model, field = target
    return Embedder(model, field, batch_size=batch_size).run(pks, fill=False).as_dict()


def _target(task: str, label: str, field_name: str) -> tuple[type[models.Model], EmbeddingField] | None:
    """The model and field a task names, or None (logged) when a deploy took them away since,
    or added them after this process started."""
    try:
        model = apps.get_model(label)
        return model, get_embedding_field(model, field_name)
    except (LookupError, ValueError) as exc:
        message = TASK_FOR_NEWER_CODE if definitions.recorded(label, field_name) else TASK_DROPPED
        logger.warning(message, task, label, field_name, exc)
        return None


def embed_pending(*targets: str | type[models.Model], limit: int | None = None) -> dict[str, Any]:
    """Embed every row that needs it: new, changed, stale, or due for a retry.

    Catches rows written without ``save()`` (``bulk_create``, ``QuerySet.update()``,
    raw SQL). ``targets`` are models or ``"app_label.Model"`` labels; all models with
    an EmbeddingField when none are given. Returns a summary per ``label.field``.
    Failure records of rows deleted behind the ORM's back go (``failures_swept``), and
    fields with ``passages`` lose those rows' passages and those of rows emptied (``passages_swept``).

    Each field runs on its own: one whose table lacks its columns, or whose run fails,
    is logged and reported in its summary (``stopped`` and ``errors``), and the fields
    after it still run.

    Run by the sweep's schedule (:data:`SWEEP_SCHEDULE_NAME`), it is :func:`sweep`: the schedule
    keeps naming this function so that workers of earlier versions can still run it.
    """
    if running_the_sweep() and limit is None:
        return sweep(*targets)
    summary = {}
    for model, field in iter_fields(targets):
        if tenancy.has_table(model, router.db_for_write(model)):
            summary[f"{model._meta.label}.{field.name}"] = sweep_field(model, field, limit)
    return summary


def sweep(*targets: str | type[models.Model]) -> dict[str, Any]:
    """The sweep: :func:`embed_pending`, in shares, and in every tenant's schema.

    Each field's run embeds at most :data:`HAND_OVER_BATCHES` requests' worth of rows (fewer at
    its django-q2 deadline), then queues the rest as the field's wake-up behind the tasks waiting,
    as a wake-up does. Unbounded, the sweep after a ``bulk_create`` or an import held a project's
    only worker until the whole backlog was embedded.

    With schemas per tenant (:mod:`semantic.tenancy`) it sweeps the public schema and then each
    tenant's, each for the fields whose tables are there; their summaries are keyed
    ``schema:label.field``.
    """
    summary = {}
    using = tenancy.database()
    for schema in tenancy.schemas(using):
        with tenancy.in_schema(using, schema) as problem:
            for model, field in iter_fields(targets) if problem is None else ():
                if tenancy.has_table(model, router.db_for_write(model)):
                    name = f"{model._meta.label}.{field.name}"
                    summary[name if schema is None else f"{schema}:{name}"] = sweep_field(
                        model, field, None, share=bool(wake_window())
                    )
    return summary


def sweep_field(
    model: type[models.Model], field: EmbeddingField, limit: int | None, *, share: bool = False
) -> dict[str, Any]:
    """One field's part of :func:`embed_pending` (with ``share``, of :func:`sweep`); what went
    wrong is in the summary, never raised."""
    label = f"{model._meta.label}.{field.name}"
    embedder = None
    try:
        embedder = Embedder(model, field)
        with _savepoint(embedder.using):
            problem = schema_problem(field, embedder.using)
            if problem is None:
                embedder.run(limit=HAND_OVER_BATCHES * embedder.batch_size if share else limit)
                handed = {"handed_over": True} if share and _hand_over_rest(model, field, embedder) else {}
                # Records of rows deleted behind the ORM's back, which would be listed and retried for ever.
                orphans = {"failures_swept": sweep_orphan_failures(field, embedder.using)}
                if not field.passages:
                    return {**embedder.outcome.as_dict(), **handed, **orphans}
                # Rows whose passages lag for reasons no save reports: passages newly turned on,
                # a passage failure's wait over, a worker stopped between a row and its passages.
                embedder.run_passages(limit=limit)
                swept = sweep_orphans(model, field, embedder.using)
                return {**embedder.outcome.as_dict(), **handed, **orphans, "passages_swept": swept}
        logger.error(SWEEP_SKIPPED, label, problem)
    except Exception as exc:
        # Its first line only: a database error goes on to quote the statement and its values.
        first_line = (str(exc).strip().splitlines() or [""])[0]
        backend = embedder.backend if embedder is not None else None
        problem = redact_keys(SWEEP_FAILED.format(error=f"{type(exc).__name__}: {first_line}"), backend)
        trace = redact_keys("".join(traceback.format_exception(exc)), backend)
        logger.error("Sweeping %s: %s\n%s", label, problem, trace)
    outcome = embedder.outcome if embedder is not None else Outcome()
    outcome.stopped = problem
    outcome.errors.append(problem)
    return outcome.as_dict()


def _hand_over_rest(model: type[models.Model], field: EmbeddingField, embedder: Embedder) -> bool:
    """After the sweep's share of a field: queue the field's wake-up for the rows left, as
    :func:`embed_field` does after its share. Not after a run that embedded nothing or stopped
    for trouble (the API failing, a key to fix): the wake-up would meet it too, and the next
    sweep tries again."""
    outcome = embedder.outcome
    if not _rest_to_hand_over(model, field, embedder.using, outcome.stopped, outcome.embedded or outcome.cleared):
        return False
    return hand_over_unless_queued(model, field.name, using=embedder.using)


def _rest_to_hand_over(
    model: type[models.Model], field: EmbeddingField, using: str | None, stopped: str | None, progressed: int
) -> bool:
    """Whether a run that did its share leaves rows to queue as the field's wake-up: only
    after it embedded or cleared rows, and stopped for nothing but its time."""
    if stopped not in (None, Embedder.OUT_OF_TIME) or not progressed:
        return False
    return pending_keys(model, field, using, cap=0) != []


@contextmanager
def _savepoint(using: str) -> Iterator[None]:
    """Inside a caller's transaction (a test's), a savepoint, so that one field's database
    error leaves that transaction usable for the next; outside one, nothing: a field's
    sweep must not become one long transaction holding its rows across API calls."""
    if transaction.get_connection(using).in_atomic_block:
        with transaction.atomic(using=using):
            yield
    else:
        yield


def queue_pending(*targets: str | type[models.Model]) -> str:
    """Queue :func:`embed_pending` on django-q2 (in this tenant's schema, with schemas per tenant);
    returns the task id."""
    labels = [t if isinstance(t, str) else t._meta.label for t in targets]
    task = tenancy.carried("semantic.tasks.embed_pending", labels, tenancy.database())
    return queue_task(*task, name="semantic: embed pending rows")


def in_schema(schema: str, using: str, func: str, *args: Any) -> dict[str, Any]:
    """Worker task: ``func(*args)``, one of this module's tasks, in the tenant schema ``schema``
    of the database ``using``: what work queued in a tenant's schema is (:func:`semantic.tenancy.carried`).
    Dropped, and logged, when no tenant has that schema any more, or when the schema does not have
    the app's tables yet (the sweep embeds its rows once it has)."""
    task = _IN_SCHEMA.get(func)
    if task is None:
        logger.warning(UNKNOWN_TASK, func, schema, extra={"tenant_schema": schema})
        return {}
    with tenancy.in_schema(using, schema) as problem:
        if problem is not None:
            level = logging.WARNING if problem is tenancy.TENANT_GONE else logging.INFO
            logger.log(level, problem.format(task=func, schema=schema), extra={"tenant_schema": schema})
            return {}
        return task(*args)


#: The tasks :func:`in_schema` runs, by the names their wrapped tasks give.
_IN_SCHEMA = {f"semantic.tasks.{task.__name__}": task for task in (embed_rows, embed_field, embed_chunk, embed_pending)}
