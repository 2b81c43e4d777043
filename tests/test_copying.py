"""Copying a project's data to another database with dumpdata and loaddata (README: Copying data):
what the app keeps in its own tables loads over what ``migrate`` recorded there."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from semantic.models import FieldDefinition

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
