"""The ``pre_migrate`` hook reads every operation of every migration in the plan, the
project's and third-party apps' alike, so it must take each one as Django allows it."""

from django.db import migrations

from semantic.migration_plan import inject_operations


def test_an_index_renamed_from_its_fields_passes_through_the_hook():
    # How Django names an index that index_together made, which had no name: the form
    # makemigrations writes when a project moves to Meta.indexes, and django-taggit's
    # 0006 (so every Wagtail site) holds.
    rename = migrations.RenameIndex(
        model_name="taggeditem", new_name="taggit_tagg_content_8fc721_idx", old_fields=("content_type", "object_id")
    )
    assert rename.old_name is None
    migration = migrations.Migration("0006_rename_taggeditem_content_type_object_id", "taggit")
    migration.operations = [rename]

    inject_operations(plan=[(migration, False)])

    assert migration.operations == [rename]
