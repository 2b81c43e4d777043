"""Large backfills through the Gemini Batch API: half the price, results within a day.

``manage.py semantic_embed --batch-api`` calls :func:`run`: it submits the pending
rows as batch embedding jobs, polls them, and writes the vectors with the same
check as every other write (a row whose text changed since it was sent keeps no
vector of the old text). Each job is recorded in :class:`EmbeddingBatchJob` with
the rows and text hashes it carries, so a stopped command loses nothing: run again,
it collects the open jobs before submitting anything new. While a job is open its
rows are left to it (:func:`in_flight`), so workers do not pay for them twice; while
jobs are being built, before they are recorded, the field is held
(:meth:`Embedder.held_for_batch`): a second submission waits for it, and workers
leave the field's rows alone (their run ends; rows saved meanwhile that no job
carries wait for the sweep).

A field with ``passages`` goes on to its passages once its rows' vectors are in: the
rows whose passages lag are cut, passages whose text already has a vector keep it,
and the others are sent as jobs of their own (every passage of a row in one job), then
stored a row at a time, each only if the row still holds the text they were cut from.
While such a job is open its rows' passages are left to it too.

Collecting a finished job, rows or passages, is :mod:`semantic.batch_collect`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from django.apps import apps
from django.db import models
from django.utils import timezone

from semantic import tenancy
from semantic.batch_collect import collect, collect_passages, wait
from semantic.embedder import Embedder
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingBatchJob
from semantic.passage_rows import CUT_ROWS, cut_all, fill_known, lagging_rows
from semantic.passage_worker import PassageItem, passage_items
from semantic.registry import get_embedding_field
from semantic.rows import first_rows, mark_pending, open_jobs, pending_rows
from semantic.running_task import running_task_of
from semantic.text import clean
from semantic.writer import Item

#: Gemini drops batch jobs after 48 hours; a job open longer no longer holds its rows.
#: Rows and bytes of text per job (inline batch requests must stay under 20 MB). Bytes as
#: sent (:func:`sent_size`), not characters: non-Latin text takes up to six times more.
MAX_JOB_ROWS = 5_000
MAX_JOB_BYTES = 8_000_000
#: Share of the interactive price the Batch API charges.
PRICE_FACTOR = 0.5

#: run() where the model's table is not (schemas per tenant: a tenant model, from the public schema).
ELSEWHERE = (
    "{label}'s rows are not in the schema this ran in (with schemas per tenant, a tenant model's rows are "
    "in each tenant's schema): run it there, for every tenant with `manage.py all_tenants_command "
    "semantic_embed {label} --batch-api`, or call run() inside django-tenants' schema_context()."
)
NEEDS_GEMINI = "--batch-api needs the Gemini backend; {label} embeds with {model_id}."
NO_TITLES = (
    "{label} sends a title with each row (title_source), which a batch job cannot; embed it without --batch-api."
)
NOT_DECLARED_HERE = (
    "--batch-api embeds a field for its whole table: name {owner}.{field}, the model that declares it, "
    "instead of {label} (or embed {label}'s rows without --batch-api)."
)
UNKNOWN_JOB = "No batch job named {name!r} was submitted for {label} from this database."
COLLECTED_JOB = (
    "Batch API job {name!r} for {label} was already collected on {finished}: "
    "{state}, {embedded} embedded, {failed} failed. There is nothing left in it to collect."
)
EXPIRED_JOB = (
    "Batch API job {name!r} for {label}, submitted on {submitted}, was never collected and is "
    "older than the 48 hours Gemini keeps a job: its rows are pending again, for the next run."
)
#: A scheduled django-q2 task can pass only literals: names, not the model class and field.
RUN_ARGUMENTS = (
    "batch.run() takes a model (or its label, 'app_label.Model') and its EmbeddingField (or the field's name); "
    "got {model!r} and {field!r}."
)


def run(
    model: type[models.Model] | str,
    field: EmbeddingField | str | None = None,
    *,
    everything: bool = False,
    limit: int | None = None,
    job_name: str | None = None,
    poll_interval: float = 30.0,
    on_event: Callable[..., None] | None = None,
) -> list[EmbeddingBatchJob]:
    """Collect the open jobs (or only ``job_name``), then submit the rows still pending
    (every row with ``everything``, at most ``limit``) and collect those.

    ``model`` and ``field`` may be names, ``run("notes.Note", "embedding")``, as a
    scheduled django-q2 task passes them (``field`` may be left out for a model with one).

    Returns the jobs finished. ``on_event(kind, job, **details)`` hears of each step:
    ``"resumed"``, ``"submitted"``, ``"waiting"`` (``waited`` seconds) and ``"finished"``
    (``status``, ``outcome``). Stopped midway, it loses nothing: the next call collects
    the jobs left open.
    """
    model, field = _resolved(model, field)
    check(model, field)
    # Jobs and rows are read where they are written: a read replica that lags would hide them.
    using = Embedder(model, field).using
    # With schemas per tenant, it runs in the tenant's schema it is called in (schema_context()),
    # else in the public one: a shared app's model's rows are there, and a schedule's run starts
    # where the worker's task before left the connection.
    here = not running_task_of("semantic.batch.run") and tenancy.home(model, using) is not None
    with contextlib.nullcontext() if here else tenancy.in_schema(using, None):
        if not tenancy.has_table(model, using):
            # A tenant model's rows and jobs are in each tenant's schema.
            raise ValueError(ELSEWHERE.format(label=model._meta.label))
        return _run(model, field, using, everything, limit, job_name, poll_interval, on_event)


def _run(
    model: type[models.Model],
    field: EmbeddingField,
    using: str,
    everything: bool,
    limit: int | None,
    job_name: str | None,
    poll_interval: float,
    on_event: Callable[..., None] | None,
) -> list[EmbeddingBatchJob]:
    notify = on_event or (lambda kind, job, **details: None)
    found = open_jobs(model, field, using=using)
    jobs = list(found.filter(name=job_name) if job_name else found)
    if job_name and not jobs:
        raise ValueError(_not_open(model, field, job_name, using))
    for job in jobs:
        notify("resumed", job)
    finished = _collect_all(model, field, jobs, poll_interval, notify)
    if job_name:
        return finished
    # Until a job is recorded nothing else leaves its rows alone: hold the field while submitting.
    with Embedder(model, field).held_for_batch():
        if everything:
            # Only the rows this run takes: the others stay current rather than pending for the sweep.
            mark_pending(first_rows(model._base_manager.using(using).all(), limit), field)
        submitted = _notified(submit(model, field, limit=limit), notify)
    finished += _collect_all(model, field, submitted, poll_interval, notify)
    if not field.passages:
        return finished
    with Embedder(model, field).held_for_batch():
        submitted = _notified(submit_passages(model, field, limit=limit), notify)
    return finished + _collect_all(model, field, submitted, poll_interval, notify)


def _resolved(model: Any, field: Any) -> tuple[type[models.Model], EmbeddingField]:
    if isinstance(model, str):
        model = apps.get_model(model)  # a LookupError names the label
    if isinstance(model, type) and issubclass(model, models.Model) and (field is None or isinstance(field, str)):
        field = get_embedding_field(model, field)  # a ValueError names the model's fields
    if not (isinstance(model, type) and issubclass(model, models.Model)) or not isinstance(field, EmbeddingField):
        raise TypeError(RUN_ARGUMENTS.format(model=model, field=field))
    return model, field


def _not_open(model: type[models.Model], field: EmbeddingField, name: str, using: str) -> str:
    """Why ``name`` is not an open job of ``field``: collected, expired, or never submitted."""
    label = f"{model._meta.label}.{field.name}"
    jobs = EmbeddingBatchJob.objects.using(using)
    job = jobs.filter(model_label=model._meta.label, field_name=field.name, name=name).first()
    if job is None:
        return UNKNOWN_JOB.format(name=name, label=label)
    if job.finished_at is None:
        return EXPIRED_JOB.format(name=name, label=label, submitted=shown_time(job.submitted_at))
    finished = shown_time(job.finished_at)
    return COLLECTED_JOB.format(
        name=name, label=label, finished=finished, state=job.state, embedded=job.embedded, failed=job.failed
    )


def shown_time(moment: datetime) -> str:
    """A job's time as its messages show it: local, with the zone's name, under ``USE_TZ``; without
    it Django's datetimes are already naive local times, which ``timezone.localtime()`` refuses."""
    if timezone.is_aware(moment):
        return f"{timezone.localtime(moment):%Y-%m-%d %H:%M %Z}"
    return f"{moment:%Y-%m-%d %H:%M}"


def _notified(jobs: Iterator[EmbeddingBatchJob], notify: Callable[..., None]) -> list[EmbeddingBatchJob]:
    submitted = []
    for job in jobs:
        submitted.append(job)
        notify("submitted", job)
    return submitted


def _collect_all(
    model: type[models.Model],
    field: EmbeddingField,
    jobs: list[EmbeddingBatchJob],
    poll_interval: float,
    notify: Callable[..., None],
) -> list[EmbeddingBatchJob]:
    for job in jobs:
        status = wait(
            job, field, poll_interval=poll_interval, on_poll=lambda job, waited: notify("waiting", job, waited=waited)
        )
        outcome = (collect_passages if job.passages else collect)(model, field, job, status)
        notify("finished", job, status=status, outcome=outcome)
    return jobs


def check(model: type[models.Model], field: EmbeddingField) -> None:
    """Raise ValueError when ``field`` cannot go through the Batch API."""
    label = f"{model._meta.label}.{field.name}"
    if model is not field.model:
        # Jobs and the rows they hold are recorded under the model that declares the field.
        raise ValueError(
            NOT_DECLARED_HERE.format(owner=field.model._meta.label, field=field.name, label=model._meta.label)
        )
    if not hasattr(field.backend, "submit_batch"):
        raise ValueError(NEEDS_GEMINI.format(label=label, model_id=field.backend.model_id))
    if field.title_source:
        raise ValueError(NO_TITLES.format(label=label))


def submit(
    model: type[models.Model], field: EmbeddingField, *, limit: int | None = None
) -> Iterator[EmbeddingBatchJob]:
    """Submit the pending rows (up to ``limit``) as jobs, yielding each once recorded."""
    backend = field.backend
    embedder = Embedder(model, field, backend=backend)
    rows = pending_rows(model, field, embedder.using).defer(field.attname).order_by("pk")
    if limit is not None:
        rows = rows[:limit]
    items: list[Item] = []
    # Writes check the row's stored hash against the one sent (item.hash): rows whose
    # Python text was never hashed, or changed without save(), get theirs before a job
    # that carries them is recorded (one statement for them all).
    stale: list[Item] = []
    size = 0
    for row in rows.iterator(chunk_size=2000):
        item = Item(row.pk, field.text_hash(row), clean(field.source_text(row), backend.max_input_chars), None)
        read_hash = getattr(row, field.source_hash_name) if field.text_from_python() else item.hash
        if read_hash != item.hash:
            stale.append(dataclasses.replace(item, read_hash=read_hash))
        if not item.text:
            embedder.refresh_hashes(stale)
            stale = []
            embedder.write_all([(item, None)])  # nothing to send: clear it now
            continue
        text_size = sent_size(item.text)
        if items and (len(items) == MAX_JOB_ROWS or size + text_size > MAX_JOB_BYTES):
            embedder.refresh_hashes([s for s in stale if s.pk != item.pk])
            stale = [s for s in stale if s.pk == item.pk]
            yield _submit(model, field, items, embedder.using)
            items, size = [], 0
        items.append(item)
        size += text_size
    embedder.refresh_hashes(stale)
    if items:
        yield _submit(model, field, items, embedder.using)


def submit_passages(
    model: type[models.Model], field: EmbeddingField, *, limit: int | None = None
) -> Iterator[EmbeddingBatchJob]:
    """Submit the passages of the rows whose passages lag (up to ``limit`` rows) as jobs,
    every passage of a row in the same job.

    A row whose passages all have a vector already (unchanged text, or a single passage
    that is the row's whole text) is stored at once, with nothing sent.
    """
    embedder = Embedder(model, field)
    rows = lagging_rows(model, field, embedder.using).order_by("pk")
    if limit is not None:
        rows = rows[:limit]
    items: list[PassageItem] = []
    size = 0
    for row_items in _missing_passages(embedder, rows.iterator(chunk_size=CUT_ROWS)):
        row_size = sum(sent_size(item.text) for item in row_items)
        if items and (len(items) + len(row_items) > MAX_JOB_ROWS or size + row_size > MAX_JOB_BYTES):
            yield _submit(model, field, items, embedder.using, passages=True)
            items, size = [], 0
        items.extend(row_items)
        size += row_size
    if items:
        yield _submit(model, field, items, embedder.using, passages=True)


def sent_size(text: str) -> int:
    """Bytes ``text`` takes in the job's request: google-genai writes JSON with every
    non-ASCII character escaped (``\\u0416``: six bytes, twelve outside the BMP)."""
    return len(json.dumps(text))


def _missing_passages(embedder: Embedder, rows: Iterator[models.Model]) -> Iterator[list[PassageItem]]:
    """For each row, its passages without a vector, as items to send; a row with none is stored now."""
    model, field = embedder.model, embedder.field
    while chunk := list(itertools.islice(rows, CUT_ROWS)):
        cuts, known = cut_all(model, field, chunk, embedder.using)
        for row in chunk:
            row_cut = cuts[row.pk]
            missing, _ = fill_known(row_cut, known, getattr(row, field.attname))
            if not missing:
                embedder.store_passages(row_cut)
                continue
            yield passage_items(row_cut, missing, field.backend.max_input_chars)


def _submit(
    model: type[models.Model], field: EmbeddingField, items: list[Any], using: str, *, passages: bool = False
) -> EmbeddingBatchJob:
    """Send ``items`` as one job and record it on ``using``, the rows' database, where every
    reader of open jobs (workers leaving its rows alone, a rerun collecting it) looks."""
    label = f"{model._meta.label}.{field.name}"
    name = field.backend.submit_batch(
        [item.text for item in items],
        task_type=field.task_type,
        dimensions=field.dimensions,
        display_name=f"django-semantic {label}{' passages' if passages else ''} {items[0].pk}-{items[-1].pk}",
    )
    if passages:
        sent = [[str(item.pk), item.position, item.hash, item.row_hash] for item in items]
    else:
        sent = [[str(item.pk), item.hash] for item in items]
    return EmbeddingBatchJob.objects.using(using).create(
        name=name,
        model_label=model._meta.label,
        field_name=field.name,
        spec=field.spec(),
        rows=len(items),
        first_pk=str(items[0].pk),
        last_pk=str(items[-1].pk),
        items=sent,
        passages=passages,
    )
