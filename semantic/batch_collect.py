"""Collecting a finished Batch API job: its vectors written, each only if its row still
holds the text sent.

:func:`semantic.batch.run` submits the jobs and calls :func:`wait` and :func:`collect` (or
:func:`collect_passages`) for each. A row's vector is written with the same check as every
other write (a row whose text changed since it was sent keeps no vector of the old text);
a passage job's rows are stored a row at a time, each only if the row still holds the
text its passages were cut from. Every job is marked collected (:func:`finish`) with what
it wrote, so a later run neither collects it again nor counts its rows as held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db import models
from django.utils import timezone

from semantic.backends import malformed
from semantic.embedder import Embedder
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingBatchJob
from semantic.passage_rows import Cut, cut_all, fill_known
from semantic.passage_worker import PassageItem
from semantic.writer import Item, Outcome


def wait(
    job: EmbeddingBatchJob,
    field: EmbeddingField,
    *,
    poll_interval: float,
    on_poll: Callable[[EmbeddingBatchJob, float], None] | None = None,
) -> Any:
    """Poll ``job`` until Gemini has finished it; returns its last status."""
    started = time.monotonic()
    while True:
        status = field.backend.batch_status(job.name, dimensions=field.dimensions)
        if status.state != job.state:
            job.state = status.state
            job.save(update_fields=["state"])
        if status.done:
            return status
        if on_poll:
            on_poll(job, time.monotonic() - started)
        time.sleep(poll_interval)


def check_results(field: EmbeddingField, job: EmbeddingBatchJob, status: Any) -> None:
    """Set ``status.error`` when a finished job's results cannot be written."""
    if job.spec != field.spec():
        status.error = f"the job was made for {job.spec}; {field.name} now embeds with {field.spec()}"
    elif status.succeeded and len(status.results) != len(job.items):
        status.error = f"the job returned {len(status.results)} results for {len(job.items)} texts"
    elif not status.succeeded and not status.error:
        # google-genai 3.6 does not pass on the reason of a failed Gemini API job.
        status.error = f"Gemini gave no reason; see the job {job.name} in Google AI Studio"


def collect(model: type[models.Model], field: EmbeddingField, job: EmbeddingBatchJob, status: Any) -> Outcome:
    """Write a finished job's vectors (each only if its row still holds the text sent)."""
    embedder = Embedder(model, field)
    check_results(field, job, status)
    if status.succeeded and not status.error:
        to_python = model._meta.pk.to_python
        items = [Item(to_python(pk), text_hash, "", None) for pk, text_hash in job.items]
        done: list[tuple[Item, Any]] = []
        for item, (vector, error, transient) in zip(items, status.results):
            if vector is not None and (problem := unusable(vector, field.dimensions)):
                vector, error, transient = None, *problem
            if vector is None:
                item.attempts = 1
                embedder.fail([item], f"Batch job {job.name}: {error}", permanent=not transient, retry_in=60)
            else:
                done.append((item, vector))
        for start in range(0, len(done), 500):
            embedder.write_all(done[start : start + 500])
    return finish(
        job, status, embedded=embedder.outcome.embedded, failed=embedder.outcome.failed, outcome=embedder.outcome
    )


def collect_passages(model: type[models.Model], field: EmbeddingField, job: EmbeddingBatchJob, status: Any) -> Outcome:
    """Store a finished passage job's rows: each row cut again, and stored only if it still
    holds the text its passages were cut from and every passage has a vector."""
    embedder = Embedder(model, field)
    check_results(field, job, status)
    if status.succeeded and not status.error:
        sent: dict[str, list[tuple[int, str, str, tuple[Any, str, bool]]]] = {}
        for (pk, position, text_hash, row_hash), result in zip(job.items, status.results):
            sent.setdefault(pk, []).append((position, text_hash, row_hash, result))
        to_python = model._meta.pk.to_python
        written = field.model._base_manager.using(embedder.using)
        rows = list(field.with_stored_text(written.filter(pk__in=[to_python(pk) for pk in sent])))
        cuts, known = cut_all(model, field, rows, embedder.using)
        embedder.outcome.changed_in_flight += len(sent) - len(rows)  # rows deleted meanwhile
        for row in rows:
            store_row(embedder, job, cuts[row.pk], sent[str(row.pk)], known, getattr(row, field.attname))
    outcome = embedder.outcome
    return finish(job, status, embedded=outcome.passages, failed=outcome.passages_failed, outcome=outcome)


def store_row(
    embedder: Embedder,
    job: EmbeddingBatchJob,
    row_cut: Cut,
    results: list[tuple[int, str, str, tuple[Any, str, bool]]],
    known: dict[tuple[str, str], list[float]],
    row_vector: Any,
) -> None:
    """Store one row's passages from a job's ``results`` (position, passage hash, row hash,
    result), if the row, cut again now, is still the text they were cut from."""
    if row_cut.row_hash != results[0][2]:
        embedder.outcome.changed_in_flight += 1  # edited since: the worker cuts it again
        return
    failed = []
    for position, text_hash, row_hash, (vector, error, transient) in results:
        if vector is not None and (problem := unusable(vector, embedder.field.dimensions)):
            vector, error, transient = None, *problem
        piece = row_cut.pieces[position] if position < len(row_cut.pieces) else None
        if vector is None:
            failed.append((PassageItem(row_cut.pk, text_hash, "", None, position, row_hash, 1), error, transient))
        elif piece is not None and piece.text_hash == text_hash:
            piece.vector = list(vector)
            embedder.outcome.passages += 1
    if failed:
        _, error, transient = failed[0]
        message = f"Batch job {job.name}: {error}"
        embedder.passages_failed([item for item, _, _ in failed], message, permanent=not transient, retry_in=60)
        return
    fill_known(row_cut, known, row_vector)
    if row_cut.complete:
        embedder.store_passages(row_cut)
    else:
        embedder.outcome.changed_in_flight += 1


def unusable(vector: Any, dimensions: int) -> tuple[str, bool] | None:
    """Why a job's vector may not be stored, and whether asking again may help; None if it may be.

    Another size is the model's answer for this field (asking again gives the same);
    a malformed vector (NaN, zeros) is retried, by the worker, like a malformed answer.
    """
    if problem := malformed(vector):
        return f"a malformed answer ({problem})", True
    if len(vector) != dimensions:
        return f"a {len(vector)}-dimensional vector", False
    return None


def finish(job: EmbeddingBatchJob, status: Any, *, embedded: int, failed: int, outcome: Outcome) -> Outcome:
    """Record that ``job`` was collected, with what it wrote; returns ``outcome``."""
    job.error = status.error or ""
    job.embedded, job.failed = embedded, failed
    job.finished_at = timezone.now()
    job.save(update_fields=["error", "embedded", "failed", "finished_at"])
    return outcome
