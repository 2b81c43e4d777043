"""The backfill: re-embedding many rows, inline or in chunks for workers.

What ``manage.py semantic_embed`` calls (the command only parses and reports). Which
rows to take, and marking them pending, is :mod:`semantic.rows`, shared with the
admin's re-embed action.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import models, router
from django.db.models import BooleanField, ExpressionWrapper, Q, Value

from semantic import tenancy
from semantic.dispatch import queue_task
from semantic.embedder import Embedder
from semantic.fields import EmbeddingField
from semantic.passage_rows import CUT_ROWS, cut_all, fill_known, lagging_rows, passage_failures
from semantic.passage_worker import passage_items
from semantic.ratelimit import CHARS_PER_TOKEN
from semantic.rows import failed_pks, failures, first_rows, mark_pending, pending_rows, waiting_out_failure
from semantic.streaming import pk_batches
from semantic.text import clean, weighted_length
from semantic.writer import Item, Outcome

#: Gemini API price assumed by --dry-run, USD per million input tokens
#: (gemini-embedding-001, Google's Gemini API pricing page, 2025). Tokens are estimated
#: as ratelimit.estimated_tokens does (about 4 characters of English a token, one a
#: Chinese character). Override with SEMANTIC["PRICE_PER_MILLION_TOKENS"].
PRICE_PER_MILLION_TOKENS = 0.15


@dataclass
class Plan:
    """What a run would send: ``rows`` taken, ``characters`` sent in all (rows' vectors and
    passages); of those, ``passages`` passages of ``passage_rows`` rows, ``passage_characters``.
    ``weighted`` is the English-equivalent size of all of it, what its tokens are estimated from.
    ``without_text``: rows taken whose text is empty once cleaned, left out of ``rows``: a run
    sends nothing for them and clears their vector, as its "without text" says."""

    rows: int
    characters: int
    without_text: int = 0
    passages: int = 0
    passage_rows: int = 0
    passage_characters: int = 0
    weighted: int = 0

    @property
    def tokens(self) -> int:
        return -(-self.weighted // CHARS_PER_TOKEN)


def database(field: EmbeddingField) -> str:
    """Where a run finds what to embed: the database the field's rows are written to, where
    the worker reads and writes them and records failures. A read replica (the router's
    ``db_for_read``) may lag behind it: counted there, rows waiting here look embedded."""
    return router.db_for_write(field.model)


def select(model: type[models.Model], field: EmbeddingField, *, everything: bool, failed: bool) -> models.QuerySet:
    """The rows a run would embed: for a field with ``passages``, also the rows whose
    vector is current but whose passages lag (passages just turned on, sizes changed).
    ``everything`` takes every row but those waiting out a failure, which only ``failed``
    takes before their time: a run sends none of them.

    Rows of the table that holds the field (a proxy's or a multi-table child's parent),
    as the worker reads them (on :func:`database`); for a child, only the child's rows
    (:func:`only_rows_of`).
    """
    table, using = field.model, database(field)
    if failed:
        rows = table._base_manager.using(using).filter(pk__in=failed_keys(model, field, using))
    elif everything:
        rows = table._base_manager.using(using).exclude(waiting_out_failure(table, field))
    elif field.passages:
        pending = pending_rows(table, field, using).values("pk")
        lagging = lagging_rows(table, field, using).values("pk")
        rows = table._base_manager.using(using).filter(Q(pk__in=pending) | Q(pk__in=lagging))
    else:
        rows = pending_rows(table, field, using)
    return only_rows_of(model, field, rows)


def is_part_of_table(model: type[models.Model], field: EmbeddingField) -> bool:
    """Whether ``model`` holds only some rows of the table with ``field``: a multi-table
    child of the model that declares it (a proxy's rows are all the table's)."""
    return model._meta.concrete_model is not field.model


def only_rows_of(model: type[models.Model], field: EmbeddingField, rows: models.QuerySet) -> models.QuerySet:
    """``rows`` of the field's table narrowed to ``model``'s: naming a multi-table child
    embeds and counts the child's rows, not its parent's others."""
    return rows.filter(pk__in=model._base_manager.values("pk")) if is_part_of_table(model, field) else rows


def count(
    model: type[models.Model], field: EmbeddingField, *, everything: bool, failed: bool, limit: int | None
) -> int:
    """How many rows a run would take."""
    total = select(model, field, everything=everything, failed=failed).count()
    return min(total, limit) if limit else total


def plan(
    model: type[models.Model], field: EmbeddingField, *, everything: bool, failed: bool, limit: int | None
) -> Plan:
    """How many rows and characters a run would send (reads the texts, writes nothing).

    A row's own vector reads its text up to the backend's input limit, and is counted
    only for a row that needs it (a row whose passages alone lag keeps its vector). For a
    field with ``passages``, the passages a run would send are counted too: the row cut
    as the worker cuts it, less the passages whose text already has a vector.
    """
    rows = select(model, field, everything=everything, failed=failed).order_by("pk")
    if not field.passages:
        rows = rows.defer(field.attname)
    needs_vector = Value(True) if everything else ExpressionWrapper(field.needs_embedding(), BooleanField())
    rows = rows.annotate(_semantic_needs_vector=needs_vector)
    if limit is not None:
        rows = rows[:limit]
    plan = Plan(0, 0)
    found = rows.iterator(chunk_size=CUT_ROWS)
    while chunk := list(itertools.islice(found, CUT_ROWS)):
        plan.rows += len(chunk)
        for row in chunk:
            if row._semantic_needs_vector:
                sent = clean(field.source_text(row), field.backend.max_input_chars)  # as the worker sends it
                plan.characters += len(sent)
                plan.weighted += weighted_length(sent)
                plan.without_text += not sent
        if field.passages:
            add_passages(plan, model, field, chunk, rows.db)
    plan.rows -= plan.without_text
    plan.characters += plan.passage_characters
    return plan


def add_passages(
    plan: Plan, model: type[models.Model], field: EmbeddingField, rows: list[models.Model], using: str
) -> None:
    """Count the passages of ``rows`` that would be sent: those without a vector for their text."""
    cuts, known = cut_all(model, field, rows, using)
    for row in rows:
        # A row embedded first lends its new vector to a passage that is its whole text.
        row_vector = [0.0] if row._semantic_needs_vector else getattr(row, field.attname)
        missing, _ = fill_known(cuts[row.pk], known, row_vector)
        sent = passage_items(cuts[row.pk], missing, field.backend.max_input_chars)
        if sent:
            plan.passage_rows += 1
            plan.passages += len(sent)
            plan.passage_characters += sum(len(item.text) for item in sent)
            plan.weighted += sum(weighted_length(item.text) for item in sent)


def failed_keys(model: type[models.Model], field: EmbeddingField, using: str | None = None) -> list[str]:
    """Rows whose last attempt failed: their vector's, or (a field with ``passages``) their passages'.

    Failures are recorded under the model that declares the field; for a multi-table
    child, only the child's rows are taken. Read on ``using``, by default where the
    rows are read from.
    """
    passages = passage_failures(model, field, using).values_list("object_pk", flat=True)
    keys = list(dict.fromkeys([*failed_pks(field.model, field, using), *passages]))
    if not is_part_of_table(model, field):
        return keys
    to_python = model._meta.pk.to_python
    own = model._base_manager.db_manager(using).filter(pk__in=[to_python(key) for key in keys])
    return [str(pk) for pk in own.values_list("pk", flat=True)]


def prepare(
    model: type[models.Model], field: EmbeddingField, *, everything: bool, failed: bool, limit: int | None = None
) -> list[Any] | None:
    """Make the chosen rows pending (with ``everything``, the first ``limit`` by primary key,
    which the run then takes); returns the primary keys to embed, or None for all pending."""
    if failed:
        # Taken and changed where the worker recorded them: a read replica refuses the update.
        using = database(field)
        pks = failed_keys(model, field, using)
        records = failures(field.model, field, using)
        passages = passage_failures(model, field, using)
        if is_part_of_table(model, field):
            records, passages = records.filter(object_pk__in=pks), passages.filter(object_pk__in=pks)
        records.update(retry_at=None, permanent=False)
        passages.update(retry_at=None, permanent=False)
        return [model._meta.pk.to_python(pk) for pk in pks]
    if everything:
        mark_pending(first_rows(select(model, field, everything=True, failed=False), limit), field)
    return None


def rehash(model: type[models.Model], field: EmbeddingField) -> tuple[int, int]:
    """Hash every row's text from Python again, storing the hashes that changed; returns
    ``(rows, changed)``, ``changed`` the rows whose text now differs from their vector's.

    When the code of a method or property in ``source`` changes, so does the text of rows
    nobody saved, and nothing in SQL can see it: their stored hash is still the old
    text's. Re-hashed, the rows whose text changed are pending, and a run embeds those
    and no others; nothing is sent here. A hash is stored only where the row still holds
    the one read with it, so a save made meanwhile keeps the hash of its own text.
    """
    if not field.text_from_python():
        return 0, 0
    writer = Embedder(model, field)
    rows = only_rows_of(model, field, field.model._base_manager.using(writer.using)).defer(field.attname)
    visited = changed = 0
    for batch in pk_batches(rows, CUT_ROWS):
        chunk = list(batch)
        visited += len(chunk)
        items = []
        for row in chunk:
            stored = getattr(row, field.source_hash_name)
            item = Item(row.pk, field.text_hash(row), "", None, read_hash=stored)
            changed += item.hash != getattr(row, field.embedded_hash_name)
            if item.hash != stored:
                items.append(item)
        writer.refresh_hashes(items)
    return visited, changed


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
    pks = prepare(model, field, everything=everything, failed=failed, limit=limit)
    if pks is None and is_part_of_table(model, field):
        # The table's other rows are not this child's to embed: name the child's by key.
        rows = select(model, field, everything=False, failed=False).order_by("pk").values_list("pk", flat=True)
        pks = list(rows[:limit] if limit is not None else rows)
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
    pks = prepare(model, field, everything=everything, failed=failed, limit=limit)
    if pks is None:
        # A chunk's run also brings its rows' passages up to date, lagging ones included.
        rows = select(model, field, everything=False, failed=False).order_by("pk").values_list("pk", flat=True)
        pks = list(rows[:limit] if limit is not None else rows)
    elif limit is not None:
        pks = pks[:limit]
    label, using = model._meta.label, router.db_for_write(model)
    name = f"semantic: re-embed {label}.{field.name}"
    tasks = 0
    for start in range(0, len(pks), chunk):
        chunk_pks = pks[start : start + chunk]
        task = tenancy.carried("semantic.tasks.embed_chunk", [label, field.name, chunk_pks, batch_size], using, model)
        queue_task(*task, name=name)
        tasks += 1
    return tasks
