from django.core.management.base import BaseCommand, CommandError

from semantic.backends import EmbeddingError
from semantic.management.output import terminal_safe
from semantic.management.targets import resolve
from semantic.query import SemanticQuerySet


class Command(BaseCommand):
    help = "Print the rows nearest in meaning to a text, with their similarity (1 = same meaning)."

    NO_RESULTS = "No embedded rows to search yet."
    ROW = "{similarity:6.3f}  #{pk}  {text}"
    EMPTY_QUERY = "Give a text to search for."
    UNAVAILABLE = "Could not embed the search text: {error}"

    def add_arguments(self, parser):
        parser.add_argument("target", help="app_label.Model or app_label.Model.field")
        parser.add_argument("text", help="what to search for")
        parser.add_argument("-k", type=int, default=10, help="how many rows to show (default 10)")

    def handle(self, target, text, k, **options):
        if k < 1:
            raise CommandError("-k must be at least 1.")
        if not "".join(c for c in text if c.isprintable()).strip():
            raise CommandError(self.EMPTY_QUERY)
        (model, field), *others = resolve(target)
        if others:
            raise CommandError(f"{model._meta.label} has several EmbeddingFields; name one: {target}.<field>.")
        try:
            results = list(SemanticQuerySet(model).similar_to(text, field=field.name)[:k])
        except EmbeddingError as exc:
            raise CommandError(self.UNAVAILABLE.format(error=exc)) from None
        if not results:
            self.stdout.write(self.NO_RESULTS)
        for row in results:
            line = terminal_safe(str(row)[:100].replace("\n", " "))
            self.stdout.write(self.ROW.format(similarity=row.similarity, pk=row.pk, text=line))
