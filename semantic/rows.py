"""Row state: which rows of a field need embedding, and marking rows to be embedded again.

The worker, the backfill command, the Batch API flow and the admin all ask these
questions; answering them in one place keeps their answers the same. Which rows are
*pending* or *stale* is the field's own SQL (:meth:`EmbeddingField.needs_embedding`);
this module adds what the app's own tables say: rows waiting out a failure, and rows
an open Batch API job carries.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, models, router, transaction
from django.db.models import Case, CharField, Exists, F, Func, JSONField, Min, OuterRef, Q, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Now
from django.db.models.lookups import Exact, IsNull
from django.utils import timezone

from semantic.field_text import EMPTY_TEXT_HASH
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingBatchJob, EmbeddingFailure

#: Gemini keeps a batch job at most this long; after it, the job's rows are free again.
JOB_LIFETIME = timedelta(hours=48)
#: Failure records of a row's passages name the field with this suffix (the row's own records name it bare).
FAILURE_SUFFIX = ":passages"
#: Keys looked up in one query when sweeping the failure records of rows that are gone.
KEYS_PER_QUERY = 1000


def pending_rows(model: type[models.Model], field: EmbeddingField, using: str | None = None) -> models.QuerySet:
    """Rows of ``model`` that need ``field`` embedded, are not waiting out a failure,
    and are not in an open Batch API job."""
    manager = model._base_manager if using is None else model._base_manager.using(using)
    rows = field.with_stored_text(manager.filter(field.needs_embedding()).exclude(waiting_out_failure(model, field)))
    batched = in_flight(model, field, using=using)
    return rows.exclude(batched) if batched is not None else rows


#: How many keys of pending rows :func:`pending_keys` reads at most: past it, a backlog.
PENDING_KEYS = 2048


def pending_keys(
    model: type[models.Model], field: EmbeddingField, using: str | None = None, *, cap: int = PENDING_KEYS
) -> list[Any] | None:
    """Keys of the rows :func:`pending_rows` returns, in no order; None when there are more than ``cap``.

    PostgreSQL cannot estimate the pending condition (a stored hash against the hash of
    the text) and takes nearly every row for pending, so asked for the first pending rows
    in key order, or whether there are any, it walks the whole table even when nothing is
    pending. With index and sequential scans off for this one statement, it can only read
    the bitmaps of the field's partial pending index and of the spec index (stale rows):
    the search costs what the pending rows cost, as the pending index promises. With a
    limit and no order it stops after ``cap`` + 1 rows, so a backlog costs no more; there
    the walk in key order finds its rows soon, and callers fall back to it.
    """
    rows = pending_rows(model, field, using)
    with transaction.atomic(using=rows.db), connections[rows.db].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('enable_seqscan'), current_setting('enable_indexscan'), "
            "set_config('enable_seqscan', 'off', true), set_config('enable_indexscan', 'off', true)"
        )
        saved = cursor.fetchone()[:2]
        try:
            keys = list(rows.values_list("pk", flat=True)[: cap + 1])
        finally:
            # Local to the transaction, which may be a caller's: give it back its planner.
            cursor.execute(
                "SELECT set_config('enable_seqscan', %s, true), set_config('enable_indexscan', %s, true)", saved
            )
    return None if len(keys) > cap else keys


def rejected(model: type[models.Model], field: EmbeddingField) -> Exists:
    """Rows whose present text the API refused for good (a 400): sending it again cannot
    help, only a new text can, so they are no work left to do."""
    return Exists(_failure_of_row(model, field).filter(_of_this_text(field)))


def waiting_out_failure(model: type[models.Model], field: EmbeddingField) -> Exists:
    """Whether a row's last attempt failed and it waits: for its retry time, or, refused by the
    API for good, for its text to change. ``--failed`` takes such rows at once; nothing else does."""
    return Exists(_failure_of_row(model, field).filter(Q(retry_at__gt=timezone.now()) | _of_this_text(field)))


def waiting_failures(model: type[models.Model], field: EmbeddingField, using: str | None = None) -> tuple[int, Any]:
    """How many rows that need embedding wait out a failure (:func:`waiting_out_failure`), and
    the next retry time among them (None when every one waits for its text to change)."""
    rows = model._base_manager.db_manager(using).filter(field.needs_embedding() & waiting_out_failure(model, field))
    count = rows.count()
    if not count:
        return 0, None
    records = EmbeddingFailure.objects.using(rows.db).filter(
        model_label=model._meta.label, field_name=field.name, retry_at__gt=timezone.now()
    )
    return count, records.aggregate(next=Min("retry_at"))["next"]


def _failure_of_row(model: type[models.Model], field: EmbeddingField) -> models.QuerySet[EmbeddingFailure]:
    return EmbeddingFailure.objects.filter(
        model_label=model._meta.label, field_name=field.name, object_pk=Cast(OuterRef("pk"), CharField())
    )


def _of_this_text(field: EmbeddingField) -> Q:
    return Q(permanent=True, source_hash=field.stored_text_hash(OuterRef))


def stale_rows(model: type[models.Model], field: EmbeddingField, using: str | None = None) -> models.QuerySet:
    """Rows whose text is unchanged but whose vector was made by another model, task type or size."""
    return model._base_manager.db_manager(using).filter(field.stale() & ~field.pending())


#: What each part of a spec (``<model>|<task type>|<size>``) is called in messages.
SPEC_PARTS = ("model", "task type", "size")


def stale_settings(model: type[models.Model], field: EmbeddingField, using: str | None = None) -> list[str]:
    """Which settings (:data:`SPEC_PARTS`) the stale rows' vectors were made with other than now."""
    current = field.spec().rsplit("|", 2)
    stored = stale_rows(model, field, using).order_by().values_list(field.spec_name, flat=True).distinct()
    differ = set()
    for spec in stored:
        parts = (spec or "").rsplit("|", 2)
        differ |= {i for i, part in enumerate(current) if len(parts) != 3 or parts[i] != part}
    return [SPEC_PARTS[i] for i in sorted(differ)]


def failures(
    model: type[models.Model], field: EmbeddingField, using: str | None = None
) -> models.QuerySet[EmbeddingFailure]:
    """The failure records of ``field``'s rows, kept in the database the rows are in
    (``using``; by default, the one ``model`` is read from), as :func:`pending_rows` reads them.

    A caller that changes them names the database ``model`` is written to: the worker
    recorded them there, and a read replica refuses writes.
    """
    using = using or router.db_for_read(model)
    return EmbeddingFailure.objects.using(using).filter(model_label=model._meta.label, field_name=field.name)


def failed_pks(model: type[models.Model], field: EmbeddingField, using: str | None = None) -> list[str]:
    return list(failures(model, field, using).values_list("object_pk", flat=True))


def open_jobs(
    model: type[models.Model], field: EmbeddingField, *, passages: bool | None = None, using: str | None = None
) -> models.QuerySet[EmbeddingBatchJob]:
    """Batch jobs still open for ``field``: of rows (``passages=False``), of passages (True), or both;
    on ``using``, by default where the jobs are read from."""
    jobs = EmbeddingBatchJob.objects.db_manager(using).filter(
        model_label=model._meta.label,
        field_name=field.name,
        finished_at__isnull=True,
        submitted_at__gt=timezone.now() - JOB_LIFETIME,
    )
    if passages is not None:
        jobs = jobs.filter(passages=passages)
    return jobs.order_by("submitted_at")


def in_flight(
    model: type[models.Model], field: EmbeddingField, *, passages: bool = False, using: str | None = None
) -> Q | None:
    """Rows that an open batch job carries, or None when no job is open: jobs of their
    vectors, or (``passages``) of their passages.

    Exactly the rows a job lists in ``items`` (each entry starts with the row's key, as
    text): a row saved meanwhile that no job carries is the worker's at once, however
    near its key is to theirs. A subquery, so the keys are not read into Python for
    every batch a worker takes. Asked on ``using``, the database of the rows it is a condition on.
    """
    jobs = open_jobs(model, field, passages=passages, using=using)
    if not jobs.exists():
        return None
    entries = Func(F("items"), function="jsonb_array_elements", output_field=JSONField())
    keys = jobs.annotate(_key=Cast(KeyTextTransform(0, entries), output_field=model._meta.pk)).values("_key")
    return Q(pk__in=keys.order_by())


def first_rows(rows: models.QuerySet, limit: int | None) -> models.QuerySet:
    """The first ``limit`` of ``rows`` by primary key (all of them with None), in a form
    :func:`mark_pending` can update.

    A run with a limit takes the pending rows in key order, so marking these and no
    others makes it re-embed exactly what it was asked to: current rows beyond the limit
    stay current instead of being left pending for the sweep (at the interactive price).
    """
    if limit is None:
        return rows
    return rows.model._base_manager.using(rows.db).filter(pk__in=rows.order_by("pk").values("pk")[:limit])


def mark_pending(rows: models.QuerySet, field: EmbeddingField) -> int:
    """Make ``rows`` pending again, as if their text had changed; returns how many.

    Their vectors stay searchable until replacements are written. Rows with text start
    waiting now (or keep waiting since when they already were). Failure records stay
    (``--failed`` retries those; a row waiting out a retry is not taken until then).
    The worker reads each row's text again, so
    text from Python that ``QuerySet.update()`` or raw SQL changed without its hash is
    hashed and embedded anew.
    """
    waiting = Coalesce(F(field.pending_since_name), Now())
    has_text = Q(IsNull(field.stored_text_hash(), False)) & ~Q(Exact(field.stored_text_hash(), EMPTY_TEXT_HASH))
    return rows.update(**{field.embedded_hash_name: None, field.pending_since_name: Case(When(has_text, then=waiting))})


def forget_failures(
    model: type[models.Model], field: EmbeddingField, pks: list[Any] | None = None, using: str | None = None
) -> None:
    """Drop the failure records of these rows (all of the field's when ``pks`` is None), on
    ``using`` or else where the worker recorded them: the database ``model`` is written to."""
    records = failures(model, field, using or router.db_for_write(model))
    if pks is not None:
        records = records.filter(object_pk__in=[str(pk) for pk in pks])
    records.delete()


def records_of_rows(field: EmbeddingField, using: str) -> models.QuerySet[EmbeddingFailure]:
    """Every failure record of ``field``'s rows on ``using``: their vectors' and their passages'."""
    names = [field.name, field.name + FAILURE_SUFFIX]
    return EmbeddingFailure.objects.using(using).filter(model_label=field.model._meta.label, field_name__in=names)


def forget_deleted(field: EmbeddingField, pks: list[Any], using: str | None = None) -> int:
    """Drop the failure records of these deleted rows (their vectors' and passages'), on
    ``using``, the database they were deleted from; returns how many."""
    records = records_of_rows(field, using or router.db_for_write(field.model))
    deleted, _ = records.filter(object_pk__in=[str(pk) for pk in pks]).delete()
    return deleted


def sweep_orphan_failures(field: EmbeddingField, using: str | None = None) -> int:
    """Drop the failure records whose row is gone (deleted outside the admin, whose deletes drop
    them at once through :func:`forget_deleted`: through the ORM, by raw SQL, or moved by a
    ``QuerySet.update()`` of a key); returns how many.

    Looked up by primary key (the table's index) in Python rather than joined in SQL: a
    record's key is text, and one the model cannot read (made by hand) is not a row's and
    is left alone, where casting it in SQL would fail the whole sweep.
    """
    using = using or router.db_for_write(field.model)
    records = records_of_rows(field, using)
    readable = readable_keys(field.model, list(set(records.values_list("object_pk", flat=True))))
    gone: list[str] = []
    pks = list(readable)
    for start in range(0, len(pks), KEYS_PER_QUERY):
        chunk = pks[start : start + KEYS_PER_QUERY]
        found = set(field.model._base_manager.using(using).filter(pk__in=chunk).values_list("pk", flat=True))
        gone += [readable[pk] for pk in chunk if pk not in found]
    deleted = 0
    for start in range(0, len(gone), KEYS_PER_QUERY):
        deleted += records.filter(object_pk__in=gone[start : start + KEYS_PER_QUERY]).delete()[0]
    return deleted


def readable_keys(model: type[models.Model], keys: list[str]) -> dict[Any, str]:
    """Primary-key values by the stored text they came from, leaving out keys the model cannot read."""
    readable = {}
    for key in keys:
        try:
            readable[model._meta.pk.to_python(key)] = key
        except ValidationError:
            continue
    return readable
