"""Where each row stands: embedded, pending, stale, failed, or empty.

``embedded``  the vector matches the row's text and the current model settings.
``pending``   the text is new or changed since it was embedded.
``stale``     the vector matches the text but was made by another model, task type or size.
``failed``    the row needs embedding and its last attempt failed (see EmbeddingFailure).
``empty``     the row has no text to embed, so it has no vector.
"""

from __future__ import annotations

from typing import Any

from django.db import models, router
from django.db.models import Case, CharField, Count, Exists, Min, OuterRef, Q, Value, When
from django.db.models.functions import Cast
from django.utils import timezone

from semantic.fields import EmbeddingField
from semantic.models import EmbeddingFailure
from semantic.passage_rows import passage_status
from semantic.ratelimit import configuration_problem
from semantic.registry import get_embedding_field, iter_fields
from semantic.rows import in_flight, open_jobs
from semantic.schema import schema_problem
from semantic.switch import serving_field

STATES = ("embedded", "pending", "stale", "failed", "empty")


def state_expression(model: type[models.Model], field: EmbeddingField) -> Case:
    """A SQL expression giving each row's state for ``field`` (one of :data:`STATES`)."""
    failed = Exists(
        EmbeddingFailure.objects.filter(
            model_label=model._meta.label,
            field_name=field.name,
            object_pk=Cast(OuterRef("pk"), CharField()),
        )
    )
    changed = field.pending()
    return Case(
        When(Q(failed) & field.needs_embedding(), then=Value("failed")),
        When(changed, then=Value("pending")),
        When(Q(**{f"{field.attname}__isnull": True}), then=Value("empty")),
        When(field.needs_embedding(), then=Value("stale")),
        default=Value("embedded"),
        output_field=CharField(),
    )


def with_state(
    queryset: models.QuerySet, field: str | None = None, *, name: str = "embedding_state"
) -> models.QuerySet:
    """``queryset`` annotated with each row's state as ``name``."""
    model = queryset.model
    return queryset.annotate(**{name: state_expression(model, get_embedding_field(model, field))})


def field_status(
    model: type[models.Model], field: EmbeddingField, rows: models.QuerySet | None = None
) -> dict[str, Any]:
    """Counts of rows per state, in one query, plus the settings the field embeds with.

    ``rows`` limits the counts to some of the model's rows (the admin passes what a
    ModelAdmin's ``get_queryset()`` lets the user see); by default every row counts.
    Every query runs on the database the rows are read from: the app's own tables they
    consult are the ones migrated beside those rows (``semantic.E008``). When the table
    lacks the field's columns (:mod:`semantic.schema`), the counts are None and
    ``problem`` says what to add.
    """
    using = rows.db if rows is not None else router.db_for_read(model)
    about = {
        "model": model._meta.label,
        "field": field.name,
        # Where the counts come from: a read replica counts rows written since its last replay late.
        "database": using,
        "spec": field.spec(),
        # The spec's parts, for people: which provider, which of its models.
        "backend": field.backend.name,
        "embedding_model": field.backend.model,
        "dimensions": field.dimensions,
        "task_type": field.task_type,
    }
    serving = serving_field(model, field.replaces if field.replaces else field.name) is field
    if table_problem := schema_problem(field, using):
        # Nothing can be counted in a table without the field's columns: None, not 0, and why.
        return {
            **about,
            "total": None,
            **dict.fromkeys(STATES),
            "serving": serving,
            "problem": table_problem,
            "oldest_pending_since": None,
            "oldest_pending_seconds": None,
            "in_batch_jobs": None,
            "batch_jobs": [],
            "passages": None,
        }
    counted = model._base_manager.using(using)
    if rows is not None:
        # A subquery, so the caller's annotations, ordering or distinct() cannot change the counts.
        counted = counted.filter(pk__in=rows.values("pk"))
    # Each state's rows and oldest wait, in one scan. The oldest pending is of the rows counted
    # as pending: a failed row's wait is its retry's, not the queue's.
    states = (
        counted.annotate(_state=state_expression(model, field))
        .values("_state")
        .annotate(n=Count("pk"), oldest=Min(field.pending_since_name))
        .order_by()
    )
    counts = dict.fromkeys(STATES, 0)
    oldest = None
    for row in states:
        counts[row["_state"]] = row["n"]
        if row["_state"] == "pending":
            oldest = row["oldest"]
    # Pending rows an open Batch API job carries: no worker takes them until it is collected.
    carried = in_flight(model, field, using=using)
    jobs = list(open_jobs(model, field, passages=False, using=using).values_list("name", flat=True)) if carried else []
    return {
        **about,
        "total": sum(counts.values()),
        **counts,
        "serving": serving,
        # What a worker found wrong with the key or model (rows wait, and recover once fixed).
        "problem": configuration_problem(field.backend),
        "oldest_pending_since": oldest,
        "oldest_pending_seconds": round((timezone.now() - oldest).total_seconds()) if oldest else None,
        "in_batch_jobs": counted.filter(field.pending() & carried).count() if carried else 0,
        "batch_jobs": jobs,
        # For fields with passages: see semantic.passage_rows.passage_status (None without).
        "passages": passage_status(model, field, counted) if field.passages else None,
    }


def status_report() -> list[dict[str, Any]]:
    """:func:`field_status` for every EmbeddingField of every installed model."""
    return [field_status(model, field) for model, field in iter_fields()]
