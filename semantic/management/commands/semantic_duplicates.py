import csv
import io
import json

from django.core.management.base import BaseCommand, CommandError

from semantic.management.targets import resolve, threshold_type
from semantic.query import DEFAULT_DUPLICATE_THRESHOLD, SemanticQuerySet


class Command(BaseCommand):
    help = "Export groups of near-duplicate rows (rows linked by pairs at least THRESHOLD similar) as CSV or JSON."

    WROTE = "Wrote {groups} groups ({rows} rows) to {output}."

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
        (model, field), *others = resolve(target)
        if others:
            raise CommandError(f"{model._meta.label} has several EmbeddingFields; name one: {target}.<field>.")
        groups = SemanticQuerySet(model).duplicate_groups(threshold, field=field.name)
        records = [
            {"group": number, "pk": row.pk, "text": str(row)}
            for number, group in enumerate(groups, start=1)
            for row in group
        ]
        buffer = io.StringIO()
        if format == "json":
            json.dump(records, buffer, ensure_ascii=False, indent=2)
            buffer.write("\n")
        else:
            writer = csv.DictWriter(buffer, fieldnames=["group", "pk", "text"])
            writer.writeheader()
            writer.writerows(records)
        if output:
            with open(output, "w", newline="", encoding="utf-8") as handle:
                handle.write(buffer.getvalue())
        else:
            self.stdout.write(buffer.getvalue(), ending="")
        if output:
            self.stdout.write(self.WROTE.format(groups=len(groups), rows=len(records), output=output))
