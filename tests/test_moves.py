"""A model moved to another app (``SeparateDatabaseAndState``, the table kept): what the app
stored under its label follows it with :class:`~semantic.migration_hooks.MoveStoredRows`."""

import pytest
from django.db import connection
from django.db.migrations.writer import MigrationWriter

from semantic.migration_hooks import MoveStoredRows
from semantic.models import DismissedPair, EmbeddingFailure, FieldSwitch

pytestmark = pytest.mark.django_db


def labels():
    return {
        model.__name__: sorted(model.objects.values_list("model_label", flat=True))
        for model in (EmbeddingFailure, DismissedPair, FieldSwitch)
    }


def test_what_was_stored_under_the_old_label_follows_the_model_and_comes_back():
    EmbeddingFailure.objects.create(model_label="notes.Note", field_name="embedding", object_pk="1", error="refused")
    EmbeddingFailure.objects.create(model_label="notes.Other", field_name="embedding", object_pk="1", error="refused")
    DismissedPair.objects.create(model_label="notes.Note", field_name="embedding", first_pk="1", second_pk="2")
    FieldSwitch.objects.create(model_label="notes.Note", field_name="old", serving_field="embedding")
    before = labels()
    operation = MoveStoredRows("notes.Note", "kb.Note")

    with connection.schema_editor() as editor:
        operation.database_forwards("kb", editor, None, None)
    assert labels() == {
        "EmbeddingFailure": ["kb.Note", "notes.Other"],
        "DismissedPair": ["kb.Note"],
        "FieldSwitch": ["kb.Note"],
    }

    with connection.schema_editor() as editor:
        operation.database_backwards("kb", editor, None, None)
    assert labels() == before


def test_the_operation_is_written_into_squashed_migrations_as_it_was_given():
    text, imports = MigrationWriter.serialize(MoveStoredRows("notes.Note", "kb.Note"))
    assert imports == {"import semantic.migration_hooks"}
    namespace = {}
    exec("import semantic.migration_hooks\nop = " + text, namespace)
    assert (namespace["op"].old_label, namespace["op"].new_label) == ("notes.Note", "kb.Note")
