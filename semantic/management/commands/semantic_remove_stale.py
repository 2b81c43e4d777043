from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from semantic.management.output import QuietMixin, terminal_safe
from semantic.stale import find_stale


class Command(QuietMixin, BaseCommand):
    help = (
        "Delete what the app stored for models and fields that no longer exist (passages, failures, "
        "pairs marked not duplicates, classifiers, field switches, batch jobs), and passages of fields "
        "that no longer keep them. Lists them and asks first, as Django's remove_stale_contenttypes does. "
        "Migrations already carry renames and removals; this finds what they could not: an app taken "
        "out of INSTALLED_APPS, a removal made with an earlier version."
    )

    NOTHING = "Nothing stale."
    ASK = "Delete these? Type 'yes' to continue, or 'no' to cancel: "
    DELETED = "Deleted {rows} rows."
    CANCELLED = "Nothing deleted."
    NO_ANSWER = "Nothing deleted: standard input closed before an answer. Pass --noinput to delete without asking."

    def add_arguments(self, parser):
        parser.add_argument("--noinput", "--no-input", action="store_false", dest="interactive", help="do not ask")
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            choices=tuple(connections),
            help="the database to clean (default: default)",
        )

    def handle(self, interactive, database, **options):
        stale = find_stale(database)
        if not stale:
            self.say(self.NOTHING)
            return
        # Asking, the list is part of the question: shown whatever the verbosity.
        show = self.stdout.write if interactive else self.say
        for group in stale:
            show(terminal_safe(str(group)))
        if interactive and self.answer() != "yes":
            self.say(self.CANCELLED)
            return
        with transaction.atomic(using=database):
            deleted = sum(group.rows.delete()[0] for group in stale)
        self.say(self.DELETED.format(rows=deleted))

    def answer(self):
        try:
            return input(self.ASK)
        except EOFError:  # run from a script or cron with nothing on standard input
            raise CommandError(self.NO_ANSWER) from None
