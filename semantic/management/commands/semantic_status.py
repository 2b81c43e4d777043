import json
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from semantic import backfill
from semantic.management.output import OutputMixin
from semantic.management.targets import check_app_migrated, resolve_all
from semantic.status import STATES, field_status


class Command(OutputMixin, BaseCommand):
    help = (
        "Show, per model and EmbeddingField, how many rows are embedded, pending, stale "
        "(made by another model, task type or size), failed or empty, how long the oldest pending row "
        "has waited, and the model, task type and dimensions in use. --json prints the same "
        "for monitoring (oldest_pending_seconds is null when nothing waits; the counts are null, and "
        "problem says why, for a table without the field's columns). Fields with passages "
        "also show how many rows have current passages, lag or failed, how many passages there are, "
        "and the characters row vectors and passages read (about 4 a token). Counts come from the database "
        "each model is read from (the router's db_for_read; database in --json). Exits with status 1 when "
        "a field cannot be embedded or counted (problem in --json), so a cron job or a monitor sees it."
    )

    HEADER = "{:<32} {:>8} " + " ".join("{:>9}" for _ in STATES) + " {:>14}  {}"
    PASSAGES_HEADER = "{:<32} {:>8} {:>8} {:>8} {:>9} {:>12} {:>14}"
    PASSAGE_COLUMNS = ("rows", "lagging", "failed", "passages", "row chars", "passage chars")
    NOTHING = "No model has an EmbeddingField."
    #: Under the table when the router reads a model from another database than it writes it to (a replica).
    READ_ELSEWHERE = (
        '{label}: counted on "{read}", the database the router reads it from; rows written to "{write}" that '
        '"{read}" does not have yet (a replica that lags) are not counted. semantic_embed counts and embeds '
        'on "{write}".'
    )
    PROBLEM = "{label}: embedding is stopped: {problem} The rows wait and are embedded once this is fixed."
    HELD = (
        "{label}: {rows} rows waiting for a vector (pending or failed) are in open Batch API job(s) {names}, "
        "which no worker takes; "
        "`manage.py semantic_embed {label} --batch-api` collects them."
    )

    #: The last word (and exit status 1) when some field is stopped: the lines above say why.
    STOPPED = "Embedding is stopped for {labels}: the problem is said above (in --json, as problem)."

    def add_arguments(self, parser):
        parser.add_argument("targets", nargs="*", help="app_label.Model[.field] (default: all)")
        parser.add_argument("--json", action="store_true", help="print JSON for monitoring")

    def handle(self, targets, json, **options):
        elsewhere: list[str] = []  # with schemas per tenant, models whose rows are in other schemas
        resolved = resolve_all(targets, note=elsewhere.append)
        for note in elsewhere:
            self.stderr.write(note)
        check_app_migrated(resolved)
        report = [field_status(model, field) for model, field in resolved]
        if json:
            self.stdout.write(_dumps(report))
        elif report:
            self.print_table(resolved, report)
        elif not elsewhere:
            self.stdout.write(self.NOTHING)
        if stopped := [f"{row['model']}.{row['field']}" for row in report if row["problem"]]:
            raise CommandError(self.STOPPED.format(labels=", ".join(stopped)))

    def print_table(self, resolved, report):
        self.stdout.write(self.HEADER.format("field", "total", *STATES, "oldest pending", "model|task type|dimensions"))
        for row in report:
            name = f"{row['model']}.{row['field']}"
            age = _age(row["oldest_pending_seconds"])
            counts = ["-" if row[key] is None else row[key] for key in ("total", *STATES)]
            self.stdout.write(self.HEADER.format(name, *counts, age, row["spec"]))
        with_passages = [row for row in report if row["passages"] is not None]
        if with_passages:
            self.stdout.write("")
            self.stdout.write(self.PASSAGES_HEADER.format("passages of", *self.PASSAGE_COLUMNS))
        for row in with_passages:
            counts = row["passages"]
            row_chars = "-" if counts["row_chars"] is None else counts["row_chars"]
            self.stdout.write(
                self.PASSAGES_HEADER.format(
                    f"{row['model']}.{row['field']}",
                    counts["rows"],
                    counts["lagging"],
                    counts["failed"],
                    counts["passages"],
                    row_chars,
                    counts["passage_chars"],
                )
            )
        for (_, field), row in zip(resolved, report):
            if row["database"] != (written := backfill.database(field)):
                label = f"{row['model']}.{row['field']}"
                self.stdout.write(self.READ_ELSEWHERE.format(label=label, read=row["database"], write=written))
        for row in report:
            if row["in_batch_jobs"]:
                label, names = f"{row['model']}.{row['field']}", ", ".join(row["batch_jobs"])
                self.stdout.write(self.HELD.format(label=label, rows=row["in_batch_jobs"], names=names))
        for row in report:
            if row["total"] is None:  # the table lacks the field's columns: the message names the field
                self.stderr.write(row["problem"])
            elif row["problem"]:
                self.stderr.write(self.PROBLEM.format(label=f"{row['model']}.{row['field']}", problem=row["problem"]))


def _age(seconds):
    """``95`` -> ``"1m 35s"``; None -> ``"-"``."""
    if seconds is None:
        return "-"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])


class _Encoder(DjangoJSONEncoder):
    """Every time with its UTC offset. Under ``USE_TZ = False`` the database hands back naive
    local times (in ``TIME_ZONE``, the connection's zone), which a monitor would take for UTC."""

    def default(self, o):
        if isinstance(o, datetime) and timezone.is_naive(o):
            o = timezone.make_aware(o, timezone.get_default_timezone())
        return super().default(o)


def _dumps(report):
    return json.dumps(report, indent=2, cls=_Encoder)
