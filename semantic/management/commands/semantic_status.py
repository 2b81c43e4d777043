import json

from django.core.management.base import BaseCommand

from semantic.management.targets import resolve_all
from semantic.status import STATES, field_status


class Command(BaseCommand):
    help = (
        "Show, per model and EmbeddingField, how many rows are embedded, pending, stale "
        "(made by another model or size), failed or empty, and the model in use."
    )

    HEADER = "{:<32} {:>8} " + " ".join("{:>9}" for _ in STATES) + "  {}"
    NOTHING = "No model has an EmbeddingField."

    def add_arguments(self, parser):
        parser.add_argument("targets", nargs="*", help="app_label.Model[.field] (default: all)")
        parser.add_argument("--json", action="store_true", help="print JSON for monitoring")

    def handle(self, targets, json, **options):
        report = [field_status(model, field) for model, field in resolve_all(targets)]
        if json:
            self.stdout.write(_dumps(report))
            return
        if not report:
            self.stdout.write(self.NOTHING)
            return
        self.stdout.write(self.HEADER.format("field", "total", *STATES, "model|task type|dimensions"))
        for row in report:
            name = f"{row['model']}.{row['field']}"
            self.stdout.write(self.HEADER.format(name, row["total"], *(row[s] for s in STATES), row["spec"]))


def _dumps(report):
    return json.dumps(report, indent=2)
