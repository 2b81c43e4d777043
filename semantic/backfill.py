"""The backfill: re-embedding many rows, inline or in chunks for workers.

What ``manage.py semantic_embed`` calls (the command only parses and reports). Which
rows to take, and marking them pending, is :mod:`semantic.rows`, shared with the
admin's re-embed action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models import Q

from semantic.dispatch import queue_task
from semantic.embedder import CHARS_PER_TOKEN, Embedder, Outcome
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingFailure
from semantic.passage_rows import lagging_rows, passage_failures
from semantic.rows import failed_pks, mark_pending, pending_rows

#: Gemini API price assumed by --dry-run, USD per million input tokens
#: (gemini-embedding-001, Google's Gemini API pricing page, 2025). About 4 characters
#: make a token in English. Override with SEMANTIC["PRICE_PER_MILLION_TOKENS"].
PRICE_PER_MILLION_TOKENS = 0.15


@dataclass
class Plan:
    rows: int
    characters: int

    @property
    def tokens(self) -> int:
        return -(-self.characters // CHARS_PER_TOKEN)


def select(model: type[models.Model], field: EmbeddingField, *, everything: bool, failed: bool) -> models.QuerySet:
    """The rows a run would embed: for a field with ``passages``, also the rows whose
    vector is current but whose passages lag (passages just turned on, sizes changed)."""
    if failed:
        return model._base_manager.filter(pk__in=failed_keys(model, field))
    if everything:
        return model._base_manager.all()
    if field.passages:
        pending = pending_rows(model, field).values("pk")
        lagging = lagging_rows(model, field).values("pk")
        return model._base_manager.filter(Q(pk__in=pending) | Q(pk__in=lagging))
    return pending_rows(model, field)


def plan(
    model: type[models.Model], field: EmbeddingField, *, everything: bool, failed: bool, limit: int | None
) -> Plan:
    """How many rows and characters a run would send (reads the texts, writes nothing)."""
    rows = select(model, field, everything=everything, failed=failed).defer(field.attname).order_by("pk")
    if limit is not None:
        rows = rows[:limit]
    count = characters = 0
    for row in rows.iterator(chunk_size=2000):
        count += 1
        characters += len(field.source_text(row))
    return Plan(count, characters)


def failed_keys(model: type[models.Model], field: EmbeddingField) -> list[str]:
    """Rows whose last attempt failed: their vector's, or (a field with ``passages``) their passages'."""
    passages = passage_failures(model, field).values_list("object_pk", flat=True)
    return list(dict.fromkeys([*failed_pks(model, field), *passages]))


def prepare(model: type[models.Model], field: EmbeddingField, *, everything: bool, failed: bool) -> list[Any] | None:
    """Make the chosen rows pending; returns the primary keys to embed, or None for all pending."""
    if failed:
        pks = failed_keys(model, field)
        EmbeddingFailure.objects.filter(model_label=model._meta.label, field_name=field.name).update(
            retry_at=None, permanent=False
        )
        passage_failures(model, field).update(retry_at=None, permanent=False)
        return [model._meta.pk.to_python(pk) for pk in pks]
    if everything:
        mark_pending(model._base_manager.all(), field)
    return None


def embed_now(
    model: type[models.Model],
    field: EmbeddingField,
    *,
    everything: bool = False,
    failed: bool = False,
    batch_size: int | None = None,
    limit: int | None = None,
    on_batch: Callable[[Outcome, int], None] | None = None,
) -> Outcome:
    """Embed the chosen rows inline, committing each batch as it is written.

    Interrupted, it loses only the batch in flight; run again, it carries on with the
    rows still pending.
    """
    pks = prepare(model, field, everything=everything, failed=failed)
    embedder = Embedder(model, field, batch_size=batch_size)
    embedder.run(pks, limit=limit, fill=False, on_batch=on_batch)
    if pks is None and field.passages:
        # Rows whose vector is current but whose passages lag (passages just turned on,
        # sizes changed): run() only brought the passages of the rows it wrote.
        embedder.run_passages(limit=limit)
    return embedder.outcome


#: Rows per ``--queue`` task, rounded down to whole requests.
CHUNK_ROWS = 256


def chunk_size(request: int) -> int:
    """Rows per ``--queue`` task for requests of ``request`` rows: whole requests, about ``CHUNK_ROWS``."""
    return request * max(1, CHUNK_ROWS // request)


def hand_to_workers(
    model: type[models.Model],
    field: EmbeddingField,
    *,
    everything: bool = False,
    failed: bool = False,
    batch_size: int | None = None,
    limit: int | None = None,
    chunk: int | None = None,
) -> int:
    """Hand the chosen rows to django-q2 workers in chunks; returns the number of tasks.

    A chunk is whole requests of about ``CHUNK_ROWS`` rows (256 for the local model, 200
    for Gemini) unless ``chunk`` says otherwise: small enough that a cluster's workers end
    together instead of one finishing the last big chunk alone.
    """
    chunk = chunk or chunk_size(batch_size or field.backend.max_batch_size)
    pks = prepare(model, field, everything=everything, failed=failed)
    if pks is None:
        # A chunk's run also brings its rows' passages up to date, lagging ones included.
        rows = select(model, field, everything=False, failed=False).order_by("pk").values_list("pk", flat=True)
        pks = list(rows[:limit] if limit is not None else rows)
    elif limit is not None:
        pks = pks[:limit]
    name = f"semantic: re-embed {model._meta.label}.{field.name}"
    tasks = 0
    for start in range(0, len(pks), chunk):
        chunk_pks = pks[start : start + chunk]
        queue_task("semantic.tasks.embed_chunk", model._meta.label, field.name, chunk_pks, batch_size, name=name)
        tasks += 1
    return tasks
