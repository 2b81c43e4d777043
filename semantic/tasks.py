"""What the django-q2 worker runs, and how saves hand work to it.

Tasks receive identifiers only (``"app_label.Model"``, field name, primary keys),
never text or keys, so nothing sensitive is stored in django-q2's queue or results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.apps import apps
from django.db import models, transaction

from semantic.conf import semantic_settings as conf
from semantic.dispatch import queue_task as queue_task  # re-exported: callers import it from here
from semantic.dispatch import wake, wake_window
from semantic.fields import embedding_fields, get_embedding_field

logger = logging.getLogger("semantic")

SWEEP_SCHEDULE_NAME = "semantic.embed_pending"
#: Seconds between a wake-up task's scans for pending rows within ``WAKE_WINDOW``.
RESCAN_EVERY = 0.25

_suspended: ContextVar[bool] = ContextVar("semantic_suspended", default=False)


@contextmanager
def suspend_embedding() -> Iterator[None]:
    """Save rows without queueing their embedding (imports, data migrations).

    The rows stay pending in the database; the next sweep or
    ``manage.py semantic_embed`` embeds them.
    """
    token = _suspended.set(True)
    try:
        yield
    finally:
        _suspended.reset(token)


def embedding_suspended() -> bool:
    return _suspended.get()


def enqueue(model: type[models.Model], field_name: str, pks: Sequence[Any], *, using: str | None = None) -> None:
    """Have these rows embedded once the current transaction commits.

    In ``SYNC`` mode they are embedded inline, on commit. Otherwise a worker is woken
    (:func:`semantic.dispatch.wake`): it embeds every pending row of the field, these
    among them, so saves that find a wake-up already waiting queue nothing.
    """
    label = model._meta.label
    if conf.SYNC:
        pks = list(pks)
        transaction.on_commit(lambda: embed_rows(label, field_name, pks, using), using=using, robust=True)
        return
    # The database travels with the wake-up, so rows saved with .using("other") are embedded there.
    args = [label, field_name] + ([using] if using not in (None, "default") else [])
    wake("semantic.tasks.embed_field", *args, name=f"semantic: embed {label}.{field_name}", using=using)


def embed_rows(
    label: str, field_name: str, pks: Sequence[Any] | None = None, using: str | None = None
) -> dict[str, Any]:
    """Worker task: embed the pending rows among ``pks`` (and others, to fill requests),
    in database ``using`` (the one the rows were saved to)."""
    from semantic.embedder import Embedder

    model = apps.get_model(label)
    field = get_embedding_field(model, field_name)
    return Embedder(model, field, using=using).run(pks).as_dict()


def embed_field(label: str, field_name: str, using: str | None = None) -> dict[str, Any]:
    """Worker task behind wake-ups: embed the field's pending rows, and keep looking a while.

    Saves skip their wake-up when their process sent one (or saw one waiting) less than
    ``WAKE_WINDOW`` seconds ago, trusting it to find their rows. So the task scans again
    until one scan starts ``WAKE_WINDOW`` seconds after the task did: that scan sees
    every row whose save relied on this task.
    """
    from semantic.embedder import Embedder

    model = apps.get_model(label)
    field = get_embedding_field(model, field_name)
    started = time.monotonic()
    window = wake_window()
    total: dict[str, Any] = {}
    while True:
        scan_started = time.monotonic()
        for key, value in Embedder(model, field, using=using).run().as_dict().items():
            if key not in total:
                total[key] = value
            elif isinstance(value, list):
                total[key] += [item for item in value if item not in total[key]]
            else:
                total[key] += value
        if scan_started - started >= window:
            return total
        time.sleep(min(RESCAN_EVERY, max(0.0, started + window - time.monotonic())))


def embed_chunk(label: str, field_name: str, pks: Sequence[Any], batch_size: int | None = None) -> dict[str, Any]:
    """Worker task for ``semantic_embed --queue``: exactly these rows, no others.

    Chunks are disjoint, so workers share a backfill without waiting for each other.
    """
    from semantic.embedder import Embedder

    model = apps.get_model(label)
    field = get_embedding_field(model, field_name)
    return Embedder(model, field, batch_size=batch_size).run(pks, fill=False).as_dict()


def embed_pending(*targets: str | type[models.Model], limit: int | None = None) -> dict[str, Any]:
    """Embed every row that needs it: new, changed, stale, or due for a retry.

    Catches rows written without ``save()`` (``bulk_create``, ``QuerySet.update()``,
    raw SQL). ``targets`` are models or ``"app_label.Model"`` labels; all models with
    an EmbeddingField when none are given. Returns a summary per ``label.field``.
    """
    from semantic.embedder import Embedder

    summary = {}
    for model, field in iter_fields(targets):
        summary[f"{model._meta.label}.{field.name}"] = Embedder(model, field).run(limit=limit).as_dict()
    return summary


def queue_pending(*targets: str | type[models.Model]) -> str:
    """Queue :func:`embed_pending` on django-q2; returns the task id."""
    labels = [t if isinstance(t, str) else t._meta.label for t in targets]
    return queue_task("semantic.tasks.embed_pending", *labels, name="semantic: embed pending rows")


def iter_fields(targets: Iterable[str | type[models.Model]] = ()) -> Iterator[tuple[type[models.Model], Any]]:
    models_ = [apps.get_model(t) if isinstance(t, str) else t for t in targets] or apps.get_models()
    for model in models_:
        for field in embedding_fields(model):
            # A proxy's or a multi-table child's rows are embedded with its parent's.
            if field.model is model or len(models_) == 1:
                yield model, field


def install_sweep_schedule(**kwargs: Any) -> None:
    """Create (or update) the django-q2 schedule that runs :func:`embed_pending`."""
    if not apps.is_installed("django_q"):
        return
    from django_q.models import Schedule

    using = kwargs.get("using", "default")
    if conf.SWEEP_MINUTES is None:
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
        },
    )
