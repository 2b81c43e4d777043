import csv
import io
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from semantic.duplicates import DuplicateSearchCanceled, connected_groups
from semantic.management.output import QuietMixin, csv_row, json_export
from semantic.management.targets import ready, resolve, threshold_type
from semantic.query import DEFAULT_DUPLICATE_THRESHOLD, with_semantic_methods


class Command(QuietMixin, BaseCommand):
    help = (
        "Export groups of near-duplicate rows (rows linked by pairs at least THRESHOLD similar) as CSV or JSON, "
        "one line per row with its highest similarity to another row of its group (nearest_pk). "
        "CSV cells are made safe to open in a spreadsheet (a leading ' before = + - @) and to print (control "
        "characters shown as \\xNN); JSON keeps the text exactly."
    )

    #: One line per row of a group; ``similarity`` is the row's highest with another row of its
    #: group, the one ``nearest_pk`` names.
    COLUMNS = ("group", "pk", "similarity", "nearest_pk", "text")
    WROTE = "Wrote {groups} groups ({rows} rows) to {output}."
    UNWRITABLE = "Cannot write {output}: {reason}."
    CANCELED = (
        "PostgreSQL cancelled the duplicate search of {label}: it took longer than the connection's "
        "statement_timeout ({timeout}), often set for the database role on managed services. Run this "
        "command with more time: PGOPTIONS='-c statement_timeout=0' python manage.py semantic_duplicates ... "
        "(unless DATABASES' OPTIONS set statement_timeout themselves: then raise it there for this run)."
    )

    def add_arguments(self, parser):
        parser.add_argument("target", help="app_label.Model or app_label.Model.field")
        parser.add_argument(
            "--threshold",
            type=threshold_type,
            default=DEFAULT_DUPLICATE_THRESHOLD,
            help=f"cosine similarity from -1 to 1 (default {DEFAULT_DUPLICATE_THRESHOLD})",
        )
        parser.add_argument("--format", choices=["csv", "json"], default="csv")
        parser.add_argument("--output", help="file to write (default: standard output)")

    def handle(self, target, threshold, format, output, **options):
        # Opened before the search, so a path that cannot be written fails at once. Appending
        # leaves an existing file as it was until there is something to write, and a file
        # this run created is removed again when the export fails.
        created = bool(output) and not os.path.exists(output)
        try:
            handle = open(output, "a", newline="", encoding="utf-8") if output else None
        except OSError as exc:
            raise CommandError(self.UNWRITABLE.format(output=output, reason=exc.strerror or exc)) from None
        try:
            groups, text = self.export(target, threshold, format)
        except BaseException:
            if handle:
                handle.close()
                if created:
                    os.remove(output)
            raise
        if not handle:
            self.write_export(text)
            return
        with handle:
            handle.truncate(0)
            handle.write(text)
        rows = sum(len(group) for group in groups)
        self.say(self.WROTE.format(groups=len(groups), rows=rows, output=output))

    def export(self, target, threshold, format):
        (model, field), *others = ready(resolve(target))
        if others:
            raise CommandError(f"{model._meta.label} has several EmbeddingFields; name one: {target}.<field>.")
        try:
            pairs = with_semantic_methods(model._default_manager.all()).duplicates(threshold, field=field.name)
        except DuplicateSearchCanceled as exc:
            raise CommandError(self.CANCELED.format(label=model._meta.label, timeout=exc.timeout)) from None
        groups = connected_groups((a, b) for a, b, _ in pairs)
        nearest: dict[Any, tuple[float, Any]] = {}
        for a, b, similarity in pairs:  # most similar first: a row's first pair is its best
            nearest.setdefault(a, (similarity, b))
            nearest.setdefault(b, (similarity, a))
        records = [
            {
                "group": number,
                "pk": row.pk,
                "similarity": round(nearest[row][0], 4),
                "nearest_pk": nearest[row][1].pk,
                "text": str(row),
            }
            for number, group in enumerate(groups, start=1)
            for row in group
        ]
        buffer = io.StringIO()
        if format == "json":
            buffer.write(json_export(records))
        else:
            writer = csv.DictWriter(buffer, fieldnames=list(self.COLUMNS))
            writer.writeheader()
            writer.writerows(csv_row(record) for record in records)
        return groups, buffer.getvalue()
