"""Which process runs the current definition of a field, so that two versions never undo each other.

A field's definition is what makes its vectors: the model, task type and size (its
spec) and what the text is made of (``source``, ``title_source``, passage sizes).
Code and settings define it per process, so during a deploy a worker started before
the change (still running through ``migrate``, or on a machine not yet restarted)
holds the old one. Without this, each version took the other's vectors for stale or
pending and embedded the whole table again, in turn, for as long as both ran, paying
the API each time.

So the database records each field's definition, with the time the process that
recorded it started (:class:`semantic.models.FieldDefinition`). ``migrate`` records
the new code's (``post_migrate``), and so does any process started after the recorded
one whose definition differs (a setting changed without a migration, such as a key
set): the most recently started process defines the field. A run in a process
started before that, with another definition, embeds nothing and says the process
must be restarted (:data:`OLDER`); its rows stay pending for the current workers.

Processes on several machines compare their own clocks' start times: keep the
machines' clocks in sync (NTP), as django-q2's schedules need too.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DatabaseError, router, transaction
from django.utils import timezone

from semantic.fields import EmbeddingField
from semantic.models import FieldDefinition
from semantic.passage_rows import CUT_RULES
from semantic.registry import iter_fields

logger = logging.getLogger("semantic")

#: When this process loaded the code and settings that define its fields. Module-level so that a
#: test can play a process started earlier (an old worker) or later (a new one).
started: datetime = timezone.now()

#: Why a run embeds nothing: a newer process recorded another definition of the field.
OLDER = (
    "{label}: this process runs an older definition of the field than the database holds (current since "
    "{since}), so it embeds nothing; the rows stay pending for the processes that run the current one. "
    "Restart this worker (qcluster, and any web server or command started before the change) so that it "
    "loads the current code and settings. Here: {mine}. In the database: {stored}."
)
#: Logged when a process records a definition that replaces another.
RECORDED = "%s: recorded the definition of this process (%s), replacing %s."


def definition(field: EmbeddingField) -> str:
    """What makes ``field``'s vectors here: spec, text parts, passage sizes and rules (never a key)."""
    parts = [field.spec(), "source=" + ",".join(field.source)]
    if field.title_source:
        parts.append(f"title={field.title_source}")
    if field.passages:
        parts.append("passages={}/{} cut={}".format(*field.passage_sizes(), CUT_RULES))
    return " ".join(parts)


def older_definition(label: str, field: EmbeddingField) -> str | None:
    """Why this process must not embed ``field`` of the model ``label`` (:data:`OLDER`), or None.

    Records this process's definition when none is stored, or when it differs from the
    stored one and this process started after it: the newest process is never held back.
    Without the table (migrations not run yet) nothing is held back either.
    """
    mine = definition(field)
    using = router.db_for_write(FieldDefinition)
    stored = FieldDefinition.objects.using(using).filter(model_label=label, field_name=field.name)
    try:
        with transaction.atomic(using=using):  # a missing table must not break a caller's transaction
            found = stored.values_list("definition", "since").first()
            if found is None:
                stored.bulk_create(
                    [FieldDefinition(model_label=label, field_name=field.name, definition=mine, since=started)],
                    ignore_conflicts=True,  # another process recorded it meanwhile: read below
                )
            elif found[0] != mine and stored.filter(since__lt=started).update(definition=mine, since=started):
                logger.info(RECORDED, label, mine, found[0])
            found = stored.values_list("definition", "since").first()
    except DatabaseError:
        return None
    if found is None or found[0] == mine:
        return None
    return OLDER.format(label=label, since=found[1].isoformat(timespec="seconds"), mine=mine, stored=found[0])


def recorded(label: str, field_name: str) -> bool:
    """Whether the database holds a definition of the field ``field_name`` of the model ``label``.

    For a field this process does not have: ``migrate`` of code that has it recorded it (removing
    or renaming a field deletes or renames its row), so this process is older than that code.
    """
    using = router.db_for_write(FieldDefinition)
    try:
        with transaction.atomic(using=using):  # a missing table must not break a caller's transaction
            return FieldDefinition.objects.using(using).filter(model_label=label, field_name=field_name).exists()
    except DatabaseError:
        return False


def record_definitions(using: str, **kwargs: Any) -> None:
    """After ``migrate`` (``post_migrate``): record the definitions of this (new) code's fields,
    so that workers still running the old code stop at their next run, before any new one."""
    if using != router.db_for_write(FieldDefinition):
        return  # the table read is elsewhere
    for model, field in iter_fields():
        try:
            older_definition(model._meta.label, field)
        except ImproperlyConfigured:
            continue  # the settings' own error is reported by the checks and the worker


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    # In tests, settings change inside one process: it then runs its new definition, newest of all.
    global started
    if setting == "SEMANTIC":
        started = timezone.now()


setting_changed.connect(_settings_changed)
