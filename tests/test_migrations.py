"""The app's own migrations leave an upgraded database as they build a new one."""

import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)

#: What ``semantic.0009_choose_scan_function`` of 2026-12-06 (67948b1..44a5a24) created.
CHOOSE_SCAN = """
CREATE FUNCTION semantic_choose_scan(probe text, max_rows double precision, few text[], many text[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $f$ BEGIN END $f$
"""


def choose_scan_functions():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proname = 'semantic_choose_scan'")
        return cursor.fetchone()[0]


def test_migrate_drops_the_function_a_short_lived_version_created():
    call_command("migrate", "semantic", "0010", verbosity=0)  # before the migration that drops it
    try:
        with connection.cursor() as cursor:
            cursor.execute(CHOOSE_SCAN)
        assert choose_scan_functions() == 1
    finally:
        call_command("migrate", "semantic", verbosity=0)
    assert choose_scan_functions() == 0
