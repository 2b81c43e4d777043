"""More than one database: routers that keep django-q2 or the app's own tables off a
database, and models whose rows a router keeps on the second database ("other")."""

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.test import override_settings
from django_q.models import Schedule

from semantic.dispatch import SWEEP_SCHEDULE_NAME

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


class QueueOnDefault:
    """django-q2's tables on "default" only, as a project with a second database keeps them."""

    def allow_migrate(self, db, app_label, **hints):
        return db == "default" if app_label == "django_q" else None


def routers(*classes):
    return override_settings(DATABASE_ROUTERS=[f"{__name__}.{cls.__name__}" for cls in classes])


def test_migrate_on_a_database_without_django_qs_tables_succeeds():
    with routers(QueueOnDefault), transaction.atomic(using="other"):
        with connections["other"].cursor() as cursor:
            # As on a database the router never let django_q's migrations run on (rolled back below).
            cursor.execute(f"DROP TABLE {Schedule._meta.db_table} CASCADE")
        call_command("migrate", database="other", verbosity=0)
        transaction.set_rollback(True, using="other")
    assert Schedule.objects.using("default").filter(name=SWEEP_SCHEDULE_NAME).exists()
