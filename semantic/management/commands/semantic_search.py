import sys

from django.core.management.base import BaseCommand, CommandError

from semantic.backends import EmbeddingError
from semantic.management.output import OutputMixin, terminal_safe
from semantic.management.targets import ready, resolve, threshold_type
from semantic.query import with_semantic_methods
from semantic.switch import serving_field
from semantic.vectors import blank


class Command(OutputMixin, BaseCommand):
    help = (
        "Print the rows nearest in meaning to a text, with their similarity (1 = same meaning, 0 = unrelated). "
        "Rows less similar than --min-similarity (default 0) are left out."
    )

    NO_RESULTS = "No embedded rows to search yet."
    NO_MATCH = "No row is at least {min_similarity} similar to the text."
    HEADER = "{similarity:>10}  {pk:<8}  {text}"
    ROW = "{similarity:>10.3f}  {pk:<8}  {text}"
    EMPTY_QUERY = "Give a text to search for."
    UNAVAILABLE = "Could not embed the search text: {error}"
    UNDECODABLE = (
        "The search text is not valid {encoding}, the encoding this process reads its arguments in "
        "(set by the locale), so it would be searched for garbled. Run the command under a UTF-8 locale "
        "(LANG=C.UTF-8) or with PYTHONUTF8=1."
    )

    def add_arguments(self, parser):
        parser.add_argument("target", help="app_label.Model or app_label.Model.field")
        parser.add_argument("text", help="what to search for")
        parser.add_argument("-k", type=int, default=10, help="how many rows to show (default 10)")
        parser.add_argument(
            "--min-similarity",
            type=threshold_type,
            default=0.0,
            metavar="S",
            help="leave out rows less similar than S, from -1 to 1 (default 0: nothing unrelated or opposite)",
        )

    def handle(self, target, text, k, min_similarity, **options):
        if k < 1:
            raise CommandError("-k must be at least 1.")
        if blank(text):
            raise CommandError(self.EMPTY_QUERY)
        # Python hands over argument bytes its encoding cannot decode as lone surrogates (surrogateescape).
        if any("\udc80" <= c <= "\udcff" for c in text):
            raise CommandError(self.UNDECODABLE.format(encoding=sys.getfilesystemencoding()))
        (model, field), *others = ready(resolve(target))
        if others:
            raise CommandError(f"{model._meta.label} has several EmbeddingFields; name one: {target}.<field>.")
        rows = with_semantic_methods(model._default_manager.all())
        try:
            results = list(rows.similar_to(text, field=field.name, min_similarity=min_similarity)[:k])
        except EmbeddingError as exc:
            raise CommandError(self.UNAVAILABLE.format(error=exc)) from None
        if not results:
            searchable = rows.filter(serving_field(model, field.name).searchable()).exists()
            self.stdout.write(self.NO_MATCH.format(min_similarity=min_similarity) if searchable else self.NO_RESULTS)
            return
        self.stdout.write(self.HEADER.format(similarity="similarity", pk="id", text="text"))
        for row in results:
            line = terminal_safe(str(row)[:100].replace("\n", " "))
            self.stdout.write(self.ROW.format(similarity=row.similarity, pk=terminal_safe(f"#{row.pk}"), text=line))
