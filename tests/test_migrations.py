"""The app's own migrations: an upgraded database ends as a new one does, and the previous
release keeps working through a rolling deploy.

Code of the previous release (a worker, an old ``semantic_embed --batch-api`` polling for
hours) still runs after ``migrate``, and its inserts name only the columns it knows. A NOT
NULL column added to an existing table without a database default makes those inserts fail:
the old Batch API run had paid for its job when it could not record it (review 4).
"""

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import AddField

from semantic.models import EmbeddingBatchJob, RateLimit

pytestmark = pytest.mark.django_db


def test_a_batch_job_recorded_by_code_from_before_0009_is_stored():
    """cc20136's INSERT: every column but ``passages``."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EmbeddingBatchJob._meta.db_table} (name, model_label, field_name, spec, rows, first_pk, "
            "last_pk, items, state, error, embedded, failed, submitted_at) VALUES ('batches/old-7', 'kb.Note', "
            "'embedding', 'gemini:gemini-embedding-001|SEMANTIC_SIMILARITY|384', 5, '46', '50', '[]', "
            "'JOB_STATE_PENDING', '', 0, 0, now())"
        )
    assert EmbeddingBatchJob.objects.get(name="batches/old-7").passages is False


def test_a_rate_limit_recorded_by_code_from_before_0006_is_stored():
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {RateLimit._meta.db_table} (key, window_start, requests, tokens, paused_until) "
            "VALUES ('old-key-hash', now(), 1, 10, NULL)"
        )
    assert RateLimit.objects.get(key="old-key-hash").problem == ""


def test_every_column_added_to_an_existing_table_has_a_database_default_or_allows_null():
    """The same for any column a later migration adds (``CreateModel`` makes a table no old code knows)."""
    loader = MigrationLoader(connection)
    added = sorted(
        (operation.model_name_lower, operation.name)
        for (app, _), migration in loader.disk_migrations.items()
        if app == "semantic"
        for operation in migration.operations
        if isinstance(operation, AddField)
    )
    assert added, "0006 and 0009 add columns"
    state = loader.project_state().apps  # after every migration
    without_default = []
    with connection.cursor() as cursor:
        for model_name, field_name in added:
            model = state.get_model("semantic", model_name)
            column = model._meta.get_field(field_name).column
            cursor.execute(
                "SELECT is_nullable, column_default FROM information_schema.columns "
                "WHERE table_name = %s AND column_name = %s",
                [model._meta.db_table, column],
            )
            nullable, default = cursor.fetchone()
            if nullable == "NO" and default is None:
                without_default.append(f"{model._meta.db_table}.{column}")
    assert without_default == []


#: What ``semantic.0009_choose_scan_function`` of 2026-12-06 (67948b1..44a5a24) created.
CHOOSE_SCAN = """
CREATE FUNCTION semantic_choose_scan(probe text, max_rows double precision, few text[], many text[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $f$ BEGIN END $f$
"""


def choose_scan_functions():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_proc WHERE proname = 'semantic_choose_scan'")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_migrate_drops_the_function_a_short_lived_version_created():
    call_command("migrate", "semantic", "0010", verbosity=0)  # before the migration that drops it
    try:
        with connection.cursor() as cursor:
            cursor.execute(CHOOSE_SCAN)
        assert choose_scan_functions() == 1
    finally:
        call_command("migrate", "semantic", verbosity=0)
    assert choose_scan_functions() == 0
