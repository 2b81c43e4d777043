"""Drops ``semantic_choose_scan()``, which a migration ``0009_choose_scan_function`` created
in versions of 2026-12-06 (67948b1..44a5a24), deleted since without a migration to undo it.

Databases migrated by one of those versions kept the function, which nothing calls; every
other database never had it, so the statement does nothing there. Undone, it does nothing
either: no code of this version or later needs the function back.

Only on PostgreSQL: the function never existed elsewhere, and a project whose tests run on
SQLite migrates this app there too (the statement is not SQLite's).
"""

from django.db import migrations


def drop_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS semantic_choose_scan(text, double precision, text[], text[])")


class Migration(migrations.Migration):
    dependencies = [
        ("semantic", "0010_field_definition"),
    ]

    operations = [
        migrations.RunPython(drop_function, migrations.RunPython.noop, elidable=True),
    ]
