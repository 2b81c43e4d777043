"""Copying a project's data to another database with dumpdata and loaddata (README: Copying data):
what the app keeps in its own tables loads over what ``migrate`` recorded there, and passages
dumped with their rows are not paid for again."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from semantic import suspend_embedding
from semantic.models import FieldDefinition, Passage
from tests.commands import call
from tests.test_passages import article
from tests.testapp.models import LongRead

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


def record(using, labels):
    """The definitions of ``labels``' fields as ``using`` recorded them, in that order: ``migrate``
    records a field when it is added, so a project whose fields came over time numbers them in
    that order, and a database migrated in one go numbers them in model order."""
    FieldDefinition.objects.using(using).all().delete()
    for pk, label in enumerate(labels, start=1):
        since = timezone.now().replace(microsecond=0) - timedelta(days=pk)  # as JSON carries it: milliseconds
        FieldDefinition.objects.using(using).create(
            pk=pk, model_label=label, field_name="embedding", definition=f"{label} on {using}", since=since
        )


def recorded(using):
    rows = FieldDefinition.objects.using(using).values_list("model_label", "definition", "since")
    return sorted(rows)


def test_a_dump_of_the_definitions_loads_over_those_migrate_recorded_in_another_order(tmp_path):
    record("default", ["testapp.Note", "testapp.Article"])  # production: Note's field came first
    fixture = tmp_path / "project.json"
    call_command("dumpdata", "semantic.FieldDefinition", natural_primary=True, output=str(fixture), verbosity=0)
    record("other", ["testapp.Article", "testapp.Note"])  # staging, just migrated: model order

    call_command("loaddata", str(fixture), database="other", verbosity=0)
    assert recorded("other") == recorded("default")
    assert FieldDefinition.objects.using("other").count() == 2


def test_passages_dumped_with_their_rows_load_without_being_sent_again(tmp_path, fake_gemini):
    with suspend_embedding():
        for i in range(3):
            LongRead.objects.create(title=f"Row {i}", body=article([i, i + 1, i + 2, i + 3, (i + 4) % 6]))
    call("semantic_embed", "testapp.LongRead")
    stored = Passage.objects.count()
    assert stored == 15  # a passage a paragraph
    rows_only = tmp_path / "rows.json"
    call_command("dumpdata", "testapp.LongRead", output=str(rows_only), verbosity=0)
    with_passages = tmp_path / "with_passages.json"
    call_command("dumpdata", "testapp.LongRead", "semantic.Passage", output=str(with_passages), verbosity=0)

    def copy(fixture):
        """Load ``fixture`` into an empty database, then run what the worker would: returns the texts sent."""
        LongRead.objects.all().delete()
        assert not Passage.objects.exists()
        call_command("loaddata", str(fixture), verbosity=0)
        fake_gemini.reset()
        call("semantic_embed", "testapp.LongRead")
        return fake_gemini.texts()

    assert len(copy(rows_only)) == stored  # the rows arrive embedded, their passages do not
    assert copy(with_passages) == []
    assert Passage.objects.count() == stored
