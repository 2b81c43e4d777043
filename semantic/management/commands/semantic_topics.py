import csv
import io

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections, router, transaction

from semantic.clusters import PERIODS, cluster
from semantic.management.output import QuietMixin, csv_row, json_export
from semantic.management.targets import ready, resolve


class Command(QuietMixin, BaseCommand):
    help = (
        "Export groups of similar rows (topics) as CSV or JSON: size, label, the most typical rows, "
        "and rows per period with --date-field. "
        "CSV cells are made safe to open in a spreadsheet (a leading ' before = + - @) and to print (control "
        "characters shown as \\xNN); JSON keeps the text exactly."
    )

    WROTE = "Wrote {groups} topics ({rows} rows) to {output}."
    CANNOT_WRITE = "Cannot write {output}: {error}."
    SEVERAL_FIELDS = "{label} has several EmbeddingFields; name one: {target}.<field>."
    UNKNOWN_CONFIG = (
        "The database has no text search configuration {config!r}; "
        "SELECT cfgname FROM pg_ts_config lists those it has (german, simple, ...)."
    )
    CSV_FIELDS = ["topic", "size", "label", "growth", "typical_pk", "typical_text"]
    #: With --date-field: each period's start and its rows, as "2026-11-30:8;2026-12-07:3".
    CSV_TREND = "trend"

    def check_config(self, using: str, config: str) -> None:
        try:
            with transaction.atomic(using=using), connections[using].cursor() as cursor:
                cursor.execute("SELECT %s::regconfig", [config])
        except DatabaseError:
            raise CommandError(self.UNKNOWN_CONFIG.format(config=config)) from None

    def add_arguments(self, parser):
        parser.add_argument("target", help="app_label.Model or app_label.Model.field")
        parser.add_argument("--k", type=int, help="number of topics (default: chosen automatically)")
        parser.add_argument("--date-field", help="a date field: rows per period and growth for each topic")
        parser.add_argument("--period", choices=PERIODS, default="week")
        parser.add_argument(
            "--config",
            help="PostgreSQL text search configuration whose stop words labels leave out, e.g. german "
            "(default: the model's KeywordIndex's, else english)",
        )
        parser.add_argument("--format", choices=["csv", "json"], default="csv")
        parser.add_argument("--output", help="file to write (default: standard output)")

    def handle(self, target, k, date_field, period, config, format, output, **options):
        (model, field), *others = ready(resolve(target))
        if others:
            raise CommandError(self.SEVERAL_FIELDS.format(label=model._meta.label, target=target))
        if config is not None:
            self.check_config(router.db_for_read(model), config)  # before the clustering, which takes a while
        try:
            topics = cluster(
                model._default_manager.all(), field=field.name, k=k, date_field=date_field, period=period, config=config
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        buffer = io.StringIO()
        if format == "json":
            records = [
                {
                    "topic": topic.number,
                    "size": topic.size,
                    "label": topic.label,
                    "words": topic.words,
                    "typical": [{"pk": row.pk, "text": str(row)} for row in topic.typical],
                    "trend": [[start.isoformat(), rows] for start, rows in topic.trend],
                    "growth": topic.growth,
                }
                for topic in topics
            ]
            buffer.write(json_export(records))
        else:
            writer = csv.DictWriter(buffer, fieldnames=[*self.CSV_FIELDS, *([self.CSV_TREND] if date_field else [])])
            writer.writeheader()
            for topic in topics:
                trend = {self.CSV_TREND: ";".join(f"{start.isoformat()}:{rows}" for start, rows in topic.trend)}
                for row in topic.typical:
                    writer.writerow(
                        csv_row(
                            {
                                "topic": topic.number,
                                "size": topic.size,
                                "label": topic.label,
                                "growth": "" if topic.growth is None else round(topic.growth, 3),
                                "typical_pk": row.pk,
                                "typical_text": str(row),
                                **(trend if date_field else {}),
                            }
                        )
                    )
        if output:
            try:
                with open(output, "w", newline="", encoding="utf-8") as handle:
                    handle.write(buffer.getvalue())
            except OSError as exc:
                raise CommandError(self.CANNOT_WRITE.format(output=output, error=exc.strerror or exc)) from None
            rows = sum(topic.size for topic in topics)
            self.say(self.WROTE.format(groups=len(topics), rows=rows, output=output))
        else:
            self.write_export(buffer.getvalue())
