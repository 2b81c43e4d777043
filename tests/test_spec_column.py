"""Upgrading a project whose migrations were written before 2026-11-27, when the spec column
was ``<field>_model``: the commands and ``check`` say what to do, and whatever
``makemigrations`` is answered, every row stays embedded.

The project is the README's (tests/test_adoption.py), embedded, then put back as such a
version left it: its migration names the column ``embedding_model`` with the class of the
time, and so does its table.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from semantic.schema import SPEC_COLUMN_OLD_NAME, SPEC_COLUMN_RENAME
from tests.test_adoption import NOTES, Project, new_project, search  # noqa: F401  (new_project: a fixture)

pytestmark = pytest.mark.django_db

WHAT = SPEC_COLUMN_OLD_NAME.format(
    label="notes.Note.embedding", table="notes_note", old="embedding_model", new="embedding_spec"
)
FIX = SPEC_COLUMN_RENAME.format(model="note", old="embedding_model", new="embedding_spec", app="notes")


@pytest.fixture
def old_project(new_project) -> Project:  # noqa: F811
    """The README's project, its 6 rows embedded, with the spec column's old name in its
    migration and its table (the indexes' names too: the new column's would clash)."""
    project = new_project(api_key="AIzaTEST-spec-column")
    project.embed()
    assert project.counts() == (len(NOTES), len(NOTES))
    (migration,) = [p for p in (project.root / "notes" / "migrations").glob("0002_*.py")]
    text = migration.read_text()
    new = re.search(r"name='embedding_spec',\n\s*field=(models\.CharField)\(", text)
    assert new, text
    old = text[: new.start()] + "name='embedding_model',\n            field=semantic.fields.EmbeddingModelField("
    migration.write_text("import semantic.fields\n" + old + text[new.end() :])
    project.sql("ALTER TABLE notes_note RENAME COLUMN embedding_spec TO embedding_model")
    for (index,) in project.sql("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%embedding_spec%'"):
        project.sql(f'ALTER INDEX "{index}" RENAME TO "{index.replace("embedding_spec", "embedding_model")}"')
    return project


def stderr(project: Project, *args: str) -> str:
    """What ``manage.py *args`` wrote to standard error, whether it failed or not."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=project.root, env=project.env, capture_output=True, text=True
    )
    return result.stderr


def kept(project: Project) -> int:
    """Rows whose vector is recorded as made by the model in use: not stale."""
    status = project.manage("semantic_status", "--json")
    return json.loads(status)[0]["embedded"]


def test_the_commands_and_check_say_to_answer_yes_to_the_rename(old_project):
    assert f"{WHAT} {FIX}" in old_project.refused("semantic_embed")
    assert f"{WHAT} {FIX}" in stderr(old_project, "semantic_status")
    warning = stderr(old_project, "check", "--database", "default")
    assert f"(semantic.W009) {WHAT}" in warning and f"HINT: {FIX}" in warning

    # The question the message quotes is the one makemigrations asks; answered as it says:
    (question,) = re.findall(r'answer y to "(.+?)"', FIX)
    asked = old_project.manage("makemigrations", "notes", input="y\n")
    assert f"{question} (a EmbeddingSpecField)? [y/N]" in asked
    assert "Rename field embedding_model on note to embedding_spec" in asked
    old_project.manage("migrate")

    assert kept(old_project) == len(NOTES)
    assert "No changes detected" in old_project.manage("makemigrations", "--check", "--dry-run")
    assert "W009" not in stderr(old_project, "check", "--database", "default")
    assert search(old_project)[0][1] == "Reset a forgotten password"


def test_noinput_removes_and_adds_the_column_and_migrate_carries_the_values(old_project, fake_gemini):
    before = old_project.migrations()
    written = old_project.manage("makemigrations", "--noinput")
    assert "Remove field embedding_model from note" in written and "Add field embedding_spec to note" in written

    old_project.manage("migrate")

    assert kept(old_project) == len(NOTES)
    assert old_project.sql("SELECT count(embedding_spec) FROM notes_note") == [(len(NOTES),)]
    # Back before it, the old column gets the values again; forwards, the new one.
    old_project.manage("migrate", "notes", before[-1])
    assert old_project.sql("SELECT count(embedding_model) FROM notes_note") == [(len(NOTES),)]
    old_project.manage("migrate", "notes")
    assert kept(old_project) == len(NOTES)
    assert "No changes detected" in old_project.manage("makemigrations", "--check", "--dry-run")
    requests = fake_gemini.request_count
    old_project.embed()
    assert fake_gemini.request_count == requests  # no row is sent again
    assert search(old_project)[0][1] == "Reset a forgotten password"


def test_the_copy_comes_between_the_new_column_and_the_old_ones_removal_in_either_order():
    from django.db import migrations, models

    from semantic.spec_column import CopySpecValues, carry_spec_values

    remove = migrations.RemoveField("note", "embedding_model")
    add = migrations.AddField("note", "embedding_spec", models.CharField(max_length=200, null=True))
    other = migrations.AddField("note", "extra", models.TextField(default=""))

    for operations, order in (([remove, other, add], [other, add]), ([add, other, remove], [add, other])):
        carried = carry_spec_values(list(operations))
        copy = carried[-2]
        assert carried == [*order, copy, remove]  # the removal only ever moves later
        assert isinstance(copy, CopySpecValues) and (copy.model_name, copy.field_name) == ("note", "embedding")
        assert carry_spec_values(carried) == carried  # a plan seen again is left as it is
    # Another model's column, or a field's own column of that name alone: nothing moves.
    alone = [remove, migrations.AddField("doc", "embedding_spec", models.CharField(max_length=200, null=True))]
    assert carry_spec_values(list(alone)) == alone
