"""Adding the app to someone else's project, as the README says, and living with it.

A throwaway project from ``django-admin startproject`` gets an app whose model already
has rows; then the README's "Add it to your project" snippets, copied from README.md
as printed, are applied; then every change a project makes to the field over the
years runs through the real ``makemigrations`` and ``migrate``, forwards and
backwards, on a table that holds vectors.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.apps import apps
from django.db import connection

from semantic.schema import MIGRATION_NEEDED
from semantic.sized_columns import UNSIZED
from tests.commands import BASE_DIR

README = BASE_DIR / "README.md"
INITIAL_MODEL = """from django.db import models


class Note(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
"""
NOTES = [
    ("Reset a forgotten password", "Use the link on the sign-in page to choose a new password."),
    ("Change the email address", "Edit your profile to use another email address."),
    ("Export invoices", "Download every invoice of the year as a spreadsheet."),
    ("Delete the account", "Closing the account removes all of its data."),
    ("Dark mode", "Switch the dashboard to dark colours in the settings."),
    ("Two-factor sign-in", "Protect the account with a code from your phone."),
]

#: Edits of the Note model that give it an HNSW index, as the README's Searching section shows.
IMPORT_EMBEDDING_INDEX = ("from semantic import", "from semantic.indexes import EmbeddingIndex\nfrom semantic import")
NOTE_EMBEDDING_INDEX = (
    "    objects = SemanticManager()\n",
    "    objects = SemanticManager()\n\n"
    "    class Meta:\n"
    '        indexes = [EmbeddingIndex(fields=["embedding"], name="note_embedding_hnsw")]\n',
)


def readme_snippet(name: str) -> str:
    """The code block after ``<!-- readme-test: name -->`` in README.md, dedented."""
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\n(\s*)```\w*\n(.*?)\n\s*```", text, re.S)
    assert match, f"README.md has no snippet marked {name!r}"
    indent = match.group(1).split("\n")[-1]
    return "\n".join(line.removeprefix(indent) for line in match.group(2).split("\n")) + "\n"


class Project:
    """A Django project in a temporary directory, run through its own manage.py."""

    def __init__(self, root: Path, database: str, env: dict[str, str]) -> None:
        self.root = root
        self.database = database
        self.env = env

    def run(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
        """``manage.py *args``, its output captured: the CompletedProcess."""
        command = [sys.executable, "manage.py", *args]
        environment = {**self.env, **(env or {})}
        return subprocess.run(
            command, cwd=self.root, env=environment, input=input, capture_output=True, text=True, timeout=300
        )

    def manage(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        """Runs a command that must succeed; returns its standard output."""
        result = self.run(*args, input=input, env=env)
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def output(self, *args: str) -> str:
        """Runs a command that must succeed; returns its standard output and error, in that order."""
        result = self.run(*args)
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    def refused(self, *args: str) -> str:
        """Runs a command that must fail; returns its standard error."""
        result = self.run(*args)
        assert result.returncode != 0, f"manage.py {' '.join(args)} did not fail:\n{result.stdout}"
        return result.stderr

    def write(self, path: str, text: str) -> None:
        (self.root / path).write_text(text)

    def edit_model(self, old: str, new: str) -> None:
        path = self.root / "notes" / "models.py"
        text = path.read_text()
        assert old in text, f"{old!r} not in models.py:\n{text}"
        path.write_text(text.replace(old, new, 1))

    def sql(self, query: str) -> list[tuple]:
        with psycopg.connect(**server_params(self.database), autocommit=True) as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else []

    def migrations(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "notes" / "migrations").glob("0*.py"))

    def change(self, old: str, new: str, *, input: str | None = None) -> str:
        """Edit the model, then makemigrations, migrate, back, and forwards again; returns the migration."""
        self.edit_model(old, new)
        before = self.migrations()
        self.manage("makemigrations", "notes", input=input)
        (created,) = set(self.migrations()) - set(before)
        self.manage("migrate")
        self.manage("migrate", "notes", before[-1])
        self.manage("migrate", "notes")
        self.manage("makemigrations", "--check", "--dry-run")
        return (self.root / "notes" / "migrations" / f"{created}.py").read_text()

    def migrate_renaming(self, operation: str) -> list[str]:
        """makemigrations answering yes to every rename it asks about, then migrate; checks the
        migration holds ``operation`` and returns the migrations there were before it."""
        before = self.migrations()
        self.manage("makemigrations", "notes", input="y\n" * 8)
        (created,) = set(self.migrations()) - set(before)
        assert operation in (self.root / "notes" / "migrations" / f"{created}.py").read_text()
        self.manage("migrate")
        return before

    def embed(self) -> str:
        return self.manage("semantic_embed")

    def counts(self, field: str = "embedding") -> tuple[int, int]:
        """(rows, rows holding a vector of the field's current text)"""
        (row,) = self.sql(
            f"SELECT count(*), count(*) FILTER (WHERE {field} IS NOT NULL AND {field}_embedded_hash IS NOT NULL) "
            "FROM notes_note"
        )
        return row


def server_params(database: str) -> dict[str, str]:
    settings = connection.settings_dict
    params = {"dbname": database, "user": settings["USER"], "host": settings["HOST"]}
    if settings["PASSWORD"]:
        params["password"] = settings["PASSWORD"]
    if settings["PORT"]:
        params["port"] = str(settings["PORT"])
    return params


def started_project(cls: type[Project], root: Path, database: str, api_key: str | None, gemini_url: str) -> Any:
    """``django-admin startproject mysite`` in ``root``, its settings reading the database's name and
    server (and, with ``api_key``, the fake Gemini server's address) from its environment."""
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(ADOPT_DB_NAME=database, ADOPT_DB_HOST=connection.settings_dict["HOST"])
    env.update(ADOPT_DB_USER=connection.settings_dict["USER"], ADOPT_DB_PORT=str(connection.settings_dict["PORT"]))
    if api_key:
        env.update(GEMINI_API_KEY=api_key, ADOPT_GEMINI_URL=gemini_url)
    command = [sys.executable, "-m", "django", "startproject", "mysite", str(root)]
    subprocess.run(command, check=True, env=env, timeout=60)
    return cls(root, database, env)


@pytest.fixture
def new_project(tmp_path: Path, fake_gemini) -> Iterator[callable]:
    """Makes projects: ``new_project(api_key=...)`` -> a Project with an app ``notes`` holding rows."""
    databases: list[str] = []

    def make(*, api_key: str | None) -> Project:
        database = f"adopt_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(**server_params("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        databases.append(database)
        project = started_project(Project, tmp_path / database, database, api_key, fake_gemini.base_url)
        project.manage("startapp", "notes")
        settings = project.root / "mysite" / "settings.py"
        # The project as it was before this app: its own app, on PostgreSQL.
        settings.write_text(
            settings.read_text()
            + '\nimport os\nINSTALLED_APPS += ["notes"]\n'
            + "DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', "
            "'NAME': os.environ['ADOPT_DB_NAME'], 'HOST': os.environ['ADOPT_DB_HOST'], "
            "'USER': os.environ['ADOPT_DB_USER'], 'PORT': os.environ['ADOPT_DB_PORT']}}\n"
        )
        project.write("notes/models.py", INITIAL_MODEL)
        project.manage("makemigrations", "notes")
        project.manage("migrate")
        rows = ", ".join(f"('{title}', '{body}')" for title, body in NOTES)
        project.sql(f"INSERT INTO notes_note (title, body) VALUES {rows}")
        # The README's steps, as printed.
        settings.write_text(settings.read_text() + "\n" + readme_snippet("settings"))
        if api_key:
            # The only addition: this machine reaches Gemini through the tests' fake server.
            settings.write_text(settings.read_text() + 'SEMANTIC["BASE_URL"] = os.environ["ADOPT_GEMINI_URL"]\n')
        project.write("notes/models.py", readme_snippet("model"))
        project.manage("makemigrations")
        project.manage("migrate")
        return project

    yield make
    with psycopg.connect(**server_params("postgres"), autocommit=True) as conn:
        for database in databases:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def search(project: Project) -> list[tuple[float, str]]:
    out = project.manage("shell", "-c", readme_snippet("search"))
    # shell's own "N objects imported automatically" line aside, the snippet's lines.
    lines = re.findall(r"^(-?\d\.\d\d)  (.+)$", out, re.M)
    return [(float(score), title) for score, title in lines]


@pytest.mark.django_db
def test_the_readme_works_as_printed_with_the_local_model(new_project):
    project = new_project(api_key=None)
    migration = project.root / "notes" / "migrations" / "0002_note_embedding_note_embedding_embedded_hash_and_more.py"
    text = migration.read_text()
    assert "GeneratedField" not in text and "dimensions" not in text  # nothing that depends on the machine
    assert text.index("AddIndex") > text.index("name='embedding_embedded_hash'")  # the index after its column

    assert project.counts() == (len(NOTES), 0)  # rows from before the field wait for the worker
    assert "6" in project.embed()
    assert project.counts() == (len(NOTES), len(NOTES))
    found = search(project)
    assert len(found) == 5 and found[0][1] == "Reset a forgotten password"
    assert [score for score, _ in found] == sorted((score for score, _ in found), reverse=True)


def test_the_readme_and_the_repositorys_settings_install_what_django_6_requires_for_the_indexes():
    """Django 6.0 stops every command (postgres.E005) of a project whose model has an
    EmbeddingIndex, a KeywordIndex or a SearchVectorField without django.contrib.postgres;
    5.2, which the suite runs on, did not ask for it, so nothing else here would notice."""
    readme: dict[str, Any] = {"INSTALLED_APPS": []}
    exec(readme_snippet("settings"), readme)
    demo = ast.parse((BASE_DIR / "project" / "settings.py").read_text())
    (demo_apps,) = (
        ast.literal_eval(node.value)
        for node in demo.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSTALLED_APPS"
    )
    assert "django.contrib.postgres" in readme["INSTALLED_APPS"]
    assert "django.contrib.postgres" in demo_apps
    assert apps.is_installed("django.contrib.postgres")  # tests.settings


@pytest.mark.django_db
def test_migrations_are_the_same_with_and_without_an_api_key(new_project):
    project = new_project(api_key=None)
    assert "No changes detected" in project.manage("makemigrations", "--check", "--dry-run")
    with_key = project.manage("makemigrations", "--check", "--dry-run", env={"GEMINI_API_KEY": "AIzaSomething"})
    assert "No changes detected" in with_key


@pytest.mark.django_db
def test_migrating_one_app_of_a_new_database_first_leaves_the_schedule_to_the_full_migrate(new_project):
    project = new_project(api_key=None)
    # A new database (a CI job, a colleague's laptop) on which only the project's own app is migrated first.
    project.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    project.manage("migrate", "notes")
    assert not project.sql("SELECT 1 FROM pg_tables WHERE tablename = 'django_q_schedule'")
    project.manage("migrate")
    assert project.sql("SELECT func FROM django_q_schedule") == [("semantic.tasks.embed_pending",)]


@pytest.mark.django_db
def test_every_later_change_migrates_forwards_and_backwards_with_vectors_in_the_table(new_project, fake_gemini):
    project = new_project(api_key="AIzaTEST-adoption")
    project.embed()
    assert project.counts() == (len(NOTES), len(NOTES))
    assert search(project)[0][1] == "Reset a forgotten password"

    # An HNSW index, as the README's Searching section shows.
    project.edit_model(*IMPORT_EMBEDDING_INDEX)
    migration = project.change(*NOTE_EMBEDDING_INDEX)
    assert "EmbeddingIndex(dimensions=384" in migration

    def changed(old: str, new: str, *, input: str | None = None) -> str:
        migration = project.change(old, new, input=input)
        assert "GeneratedField" not in migration
        fake_gemini.reset()
        project.embed()
        assert project.counts() == (len(NOTES), len(NOTES)), migration
        return migration

    # The source: only the pending index changes.
    migration = changed('source=("title", "body")', 'source=("title",)')
    assert "AddIndex" in migration and "AddField" not in migration and "RemoveField" not in migration
    assert fake_gemini.request_count >= 1  # every row's text changed, so every row was embedded again

    # Title and task type, then the size: no column is altered, the HNSW index is rebuilt.
    changed('source=("title",)', 'source="body", title_source="title", task_type="RETRIEVAL_DOCUMENT"')
    migration = changed('task_type="RETRIEVAL_DOCUMENT"', 'task_type="RETRIEVAL_DOCUMENT", dimensions=768')
    assert "EmbeddingIndex(dimensions=768" in migration
    assert project.sql("SELECT DISTINCT vector_dims(embedding) FROM notes_note") == [(768,)]
    changed("dimensions=768", 'dimensions=768, embedding_model="gemini-embedding-exp"')

    # A source field renamed: PostgreSQL follows it; the index is rebuilt on the new name.
    project.edit_model("body = models.TextField(blank=True)", "content = models.TextField(blank=True)")
    migration = changed('source="body"', 'source="content"', input="y\n" * 5)
    assert "RenameField" in migration

    # A second field replacing the first, on a table with vectors and an HNSW index.
    migration = changed(
        "    objects = SemanticManager()\n",
        '    embedding_v2 = EmbeddingField(source="content", dimensions=256, replaces="embedding")\n\n'
        "    objects = SemanticManager()\n",
    )
    assert project.counts("embedding_v2") == (len(NOTES), len(NOTES))

    # Removing the field again.
    project.change('    embedding_v2 = EmbeddingField(source="content", dimensions=256, replaces="embedding")\n', "")
    columns = {
        name
        for (name,) in project.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'notes_note'")
    }
    assert not {c for c in columns if c.startswith("embedding_v2")}


@pytest.mark.django_db
def test_migrations_squashed_over_a_model_rename_build_a_new_database(new_project):
    project = new_project(api_key=None)
    project.edit_model("class Note(", "class Memo(")
    project.migrate_renaming("RenameModel")
    squashed = project.manage("squashmigrations", "notes", project.migrations()[-1], "--noinput")
    assert "Created new squashed migration" in squashed
    text = next((project.root / "notes" / "migrations").glob("0001_squashed_*.py")).read_text()
    assert "RenameIndex" in text  # what Django's optimizer leaves, and a new database used to fail on

    # A new database (CI, a colleague) built from the squashed migration.
    project.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    project.manage("migrate")
    (index,) = project.sql(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'notes_memo' AND indexname LIKE '%pending'"
    )
    assert index == (re.search(r"new_name='(semantic_\w+_pending)'", text).group(1),)  # the name after the rename
    assert "No changes detected" in project.manage("makemigrations", "--check", "--dry-run")
    project.sql("INSERT INTO notes_memo (title, body) VALUES ('Reset a forgotten password', '')")
    project.embed()
    assert project.sql("SELECT count(*) FROM notes_memo WHERE embedding IS NOT NULL") == [(1,)]
    project.manage("migrate", "notes", "zero")


INDEX_TOGETHER = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("notes", "{previous}")]
    operations = [migrations.AlterIndexTogether(name="note", index_together={{("title", "body")}})]
"""


@pytest.mark.django_db
def test_an_index_together_moved_to_meta_indexes_migrates(new_project):
    # What Django before 5.1 wrote for Meta.index_together (an index without a name), then
    # what makemigrations writes on moving it to Meta.indexes: RenameIndex(old_fields=...),
    # as django-taggit's 0006 in every Wagtail site.
    project = new_project(api_key=None)
    project.write("notes/migrations/0003_index_together.py", INDEX_TOGETHER.format(previous=project.migrations()[-1]))
    project.manage("migrate")
    project.edit_model(
        "    objects = SemanticManager()\n",
        "    objects = SemanticManager()\n\n    class Meta:\n"
        '        indexes = [models.Index(fields=["title", "body"], name="notes_title_body_idx")]\n',
    )
    project.manage("makemigrations", "notes")
    assert "old_fields=" in (project.root / "notes" / "migrations" / f"{project.migrations()[-1]}.py").read_text()

    project.manage("migrate")
    assert project.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'notes_title_body_idx'") == [(1,)]
    # A new database (CI, a colleague, manage.py test) runs them all in one plan.
    project.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    project.manage("migrate")
    assert project.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'notes_title_body_idx'") == [(1,)]


@pytest.mark.django_db
def test_a_field_renamed_and_changed_at_once_is_embedded_again_both_ways(new_project):
    project = new_project(api_key=None)
    project.embed()
    # Django renames the companions (unchanged) but drops and adds the vector column (changed).
    migration = project.change(
        'embedding = EmbeddingField(source=("title", "body"))',
        'vec = EmbeddingField(source=("title", "body"), task_type="CLUSTERING")',
        input="y\n" * 8,
    )
    assert "RenameField" in migration and "RemoveField" in migration
    assert project.counts("vec") == (len(NOTES), 0)
    assert f"{len(NOTES)} embedded" in project.embed()
    assert project.counts("vec") == (len(NOTES), len(NOTES))

    # Undone: the model and its migrations as they were.
    project.manage("migrate", "notes", project.migrations()[-2])
    (project.root / "notes" / "migrations" / f"{project.migrations()[-1]}.py").unlink()
    project.edit_model(
        'vec = EmbeddingField(source=("title", "body"), task_type="CLUSTERING")',
        'embedding = EmbeddingField(source=("title", "body"))',
    )
    assert project.counts("embedding") == (len(NOTES), 0)
    assert f"{len(NOTES)} embedded" in project.embed()


def test_a_size_change_across_2000_dimensions_changes_the_column_type_both_ways(new_project, fake_gemini):
    """Above 2,000 dimensions the column is halfvec: crossing that line alters the column, as a
    database built from scratch has it; a size change on one side of it runs no SQL."""
    project = new_project(api_key="AIzaTEST-adoption")
    project.edit_model(*IMPORT_EMBEDDING_INDEX)
    project.change(*NOTE_EMBEDDING_INDEX)
    project.embed()

    def column() -> tuple[str, list[tuple[int]]]:
        """(the column's type, the sizes of the vectors in it)"""
        ((type_,),) = project.sql(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'notes_note'::regclass AND attname = 'embedding'"
        )
        return type_, project.sql("SELECT DISTINCT vector_dims(embedding) FROM notes_note")

    def index() -> str:
        ((definition,),) = project.sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'note_embedding_hnsw'")
        return definition

    def resize(old: str, new: str) -> tuple[str, str]:
        """Changes the size in place and embeds again; returns the migration's SQL, forwards and backwards."""
        project.change(old, new)
        name = project.migrations()[-1]
        sql = project.manage("sqlmigrate", "notes", name), project.manage("sqlmigrate", "notes", name, "--backwards")
        fake_gemini.reset()
        project.embed()
        assert project.counts() == (len(NOTES), len(NOTES))
        assert search(project)[0][1] == "Reset a forgotten password"
        return sql

    # On one side of 2,000: the column stays, only the HNSW index is rebuilt.
    forwards, backwards = resize('source=("title", "body")', 'source=("title", "body"), dimensions=768')
    assert "ALTER COLUMN" not in forwards + backwards
    assert column() == ("vector", [(768,)]) and "vector_cosine_ops" in index()

    # Across it: the column becomes halfvec, as in a database migrated from scratch, and back.
    forwards, backwards = resize("dimensions=768", "dimensions=3072")
    assert 'ALTER COLUMN "embedding" TYPE halfvec' in forwards
    assert 'ALTER COLUMN "embedding" TYPE vector' in backwards
    assert column() == ("halfvec", [(3072,)]) and "halfvec_cosine_ops" in index()
    before = project.migrations()[-2]
    project.manage("migrate", "notes", before)
    assert column() == ("vector", [(3072,)]) and "vector_cosine_ops" in index()
    project.manage("migrate", "notes")
    assert column() == ("halfvec", [(3072,)])

    # And down again across it.
    forwards, backwards = resize("dimensions=3072", "dimensions=768")
    assert 'ALTER COLUMN "embedding" TYPE vector' in forwards
    assert column() == ("vector", [(768,)]) and "vector_cosine_ops" in index()


@pytest.mark.django_db
def test_a_column_an_earlier_version_left_as_vector_above_2000_dimensions_is_fixed_as_the_message_says(
    new_project, fake_gemini
):
    """Before size changes altered the column, 384 -> 3,072 left it ``vector``; makemigrations
    and migrate have nothing to do there, so the message must say what does fix it."""
    project = new_project(api_key="AIzaTEST-adoption")
    project.embed()
    project.edit_model(*IMPORT_EMBEDDING_INDEX)
    project.edit_model(*NOTE_EMBEDDING_INDEX)
    project.change('source=("title", "body")', 'source=("title", "body"), dimensions=3072')
    # What the earlier version's migration left behind: the migration applied, the column as it was.
    project.sql("ALTER TABLE notes_note ALTER COLUMN embedding TYPE vector")
    assert "No changes detected" in project.manage("makemigrations", "--check", "--dry-run")

    sql = 'ALTER TABLE "notes_note" ALTER COLUMN "embedding" TYPE halfvec USING "embedding"::halfvec'
    message = MIGRATION_NEEDED.format(
        label="notes.Note.embedding", actual="vector", declared="halfvec", field="embedding", app="notes", sql=sql
    )
    assert message in project.refused("semantic_embed")

    # As the message says: an empty migration holding the statement it gives.
    project.manage("makemigrations", "notes", "--empty", "--name", "embedding_halfvec")
    (operation,) = re.findall(r"`(migrations\.RunSQL\(.+?\))`", message)
    path = project.root / "notes" / "migrations" / f"{project.migrations()[-1]}.py"
    path.write_text(path.read_text().replace("operations = [", f"operations = [\n        {operation},", 1))
    project.manage("migrate")
    project.manage("migrate", "notes", project.migrations()[-2])
    project.manage("migrate", "notes")
    project.embed()
    assert project.counts() == (len(NOTES), len(NOTES))
    assert project.sql("SELECT DISTINCT pg_typeof(embedding)::text, vector_dims(embedding) FROM notes_note") == [
        ("halfvec", 3072)
    ]
    assert search(project)[0][1] == "Reset a forgotten password"


@pytest.mark.django_db
def test_a_column_created_with_its_size_before_2026_11_27_is_made_as_a_new_one_by_migrate(new_project, fake_gemini):
    """Versions before 2026-11-27 created the column ``vector(<size>)`` and the HNSW index on
    the bare column, from the same migration files; left so, a later size change would alter
    nothing and the field would stop being embedded, on the upgraded database only."""
    project = new_project(api_key="AIzaTEST-sized")
    project.edit_model(*IMPORT_EMBEDDING_INDEX)
    project.edit_model(*NOTE_EMBEDDING_INDEX)
    project.manage("makemigrations", "notes")
    project.manage("migrate")
    project.embed()

    def shape() -> list[tuple[str, str]]:
        return project.sql(
            "SELECT format_type(atttypid, atttypmod), indexdef FROM pg_attribute, pg_indexes "
            "WHERE attrelid = 'notes_note'::regclass AND attname = 'embedding' AND indexname = 'note_embedding_hnsw'"
        )

    fresh = shape()
    ((size,),) = project.sql("SELECT DISTINCT vector_dims(embedding) FROM notes_note")
    vectors = project.sql("SELECT id, embedding::text FROM notes_note ORDER BY id")
    # The database as such a version left it.
    project.sql("DROP INDEX note_embedding_hnsw")
    project.sql(f"ALTER TABLE notes_note ALTER COLUMN embedding TYPE vector({size})")
    project.sql("CREATE INDEX note_embedding_hnsw ON notes_note USING hnsw (embedding vector_cosine_ops)")

    out = project.manage("migrate")
    assert (
        UNSIZED.format(
            label="notes.Note.embedding", actual=f"vector({size})", declared="vector", indexes="note_embedding_hnsw"
        )
        in out
    )
    assert shape() == fresh
    assert project.sql("SELECT id, embedding::text FROM notes_note ORDER BY id") == vectors
    assert "before 2026-11-27" not in project.manage("migrate")  # nothing left to change

    project.change('source=("title", "body")', 'source=("title", "body"), dimensions=1536')
    fake_gemini.reset()
    project.embed()
    assert project.counts() == (len(NOTES), len(NOTES))
    assert project.sql("SELECT DISTINCT vector_dims(embedding) FROM notes_note") == [(1536,)]
    assert search(project)[0][1] == "Reset a forgotten password"


@pytest.mark.django_db
def test_renames_and_removals_carry_what_the_app_stored_for_the_rows(new_project, fake_gemini):
    project = new_project(api_key="AIzaTEST-renames")
    project.change('source=("title", "body")', 'source="body", title_source="title", passages=True')
    project.embed()
    passages = project.sql("SELECT id, model_label, field_name FROM semantic_passage ORDER BY id")
    assert len(passages) >= len(NOTES) and {p[1:] for p in passages} == {("notes.Note", "embedding")}
    # What a reviewer and a failed row leave in the app's tables, keyed by the same names.
    project.sql(
        "INSERT INTO semantic_dismissedpair (model_label, field_name, first_pk, second_pk, dismissed_by, dismissed_at) "
        "VALUES ('notes.Note', 'embedding', '1', '2', 'admin', now())"
    )
    project.sql(
        "INSERT INTO semantic_embeddingfailure (model_label, field_name, object_pk, attempts, error, permanent, "
        "first_failed_at, last_failed_at) VALUES ('notes.Note', 'embedding', '3', 1, 'refused', true, now(), now())"
    )

    # A label classifier trained on the title, and queries of a replaced field served by this one.
    project.sql(
        "INSERT INTO semantic_classifier (model_label, field_name, label_field, spec, classes, weights, intercepts, "
        "rows, trained_at) VALUES ('notes.Note', 'embedding', 'title', 'm', '[]', '', '', 0, now())"
    )
    project.sql(
        "INSERT INTO semantic_fieldswitch (model_label, field_name, serving_field, switched_at) "
        "VALUES ('notes.Note', 'old_embedding', 'embedding', now())"
    )

    def stored() -> set[tuple[str, str, str]]:
        rows = set()
        for table in ("passage", "dismissedpair", "embeddingfailure"):
            rows |= {(table, *r) for r in project.sql(f"SELECT DISTINCT model_label, field_name FROM semantic_{table}")}
        return rows

    def names(model: str, field: str) -> set[tuple[str, str, str]]:
        return {(table, model, field) for table in ("passage", "dismissedpair", "embeddingfailure")}

    # A passage left under the new name by a field of that name long gone: it gives way.
    project.sql(
        'INSERT INTO semantic_passage (model_label, field_name, object_pk, position, start, "end", text, text_hash, '
        "cut_from, spec, vector) SELECT model_label, 'meaning', object_pk, position, start, \"end\", 'left over', "
        "text_hash, cut_from, spec, vector FROM semantic_passage WHERE object_pk = '1' AND position = 0"
    )

    # The title renamed, and with it what the classifier learns to predict.
    project.edit_model("    title = models.CharField(", "    heading = models.CharField(")
    migration = project.change('title_source="title"', 'title_source="heading"', input="y\n")
    assert "RenameField" in migration
    assert project.sql("SELECT field_name, label_field FROM semantic_classifier") == [("embedding", "heading")]

    # The field renamed: makemigrations asks about it and its companion columns.
    project.edit_model("    embedding = EmbeddingField(", "    meaning = EmbeddingField(")
    before = project.migrate_renaming("RenameField")
    assert stored() == names("notes.Note", "meaning")
    assert project.sql("SELECT field_name, label_field FROM semantic_classifier") == [("meaning", "heading")]
    assert project.sql("SELECT field_name, serving_field FROM semantic_fieldswitch") == [("old_embedding", "meaning")]
    assert project.sql("SELECT id, model_label, field_name FROM semantic_passage ORDER BY id") == [
        (pk, "notes.Note", "meaning") for pk, *_ in passages
    ]
    fake_gemini.reset()
    project.embed()
    assert fake_gemini.request_count == 0  # the vectors and the passages were kept: nothing to embed again
    project.manage("migrate", "notes", before[-1])
    assert stored() == names("notes.Note", "embedding")
    assert project.sql("SELECT field_name, label_field FROM semantic_classifier") == [("embedding", "heading")]
    project.manage("migrate", "notes")
    assert stored() == names("notes.Note", "meaning")

    # The model renamed.
    project.edit_model("class Note(", "class Memo(")
    before = project.migrate_renaming("RenameModel")
    assert stored() == names("notes.Memo", "meaning")
    assert [pk for pk, *_ in project.sql("SELECT id FROM semantic_passage ORDER BY id")] == [p[0] for p in passages]
    fake_gemini.reset()
    project.embed()
    assert fake_gemini.request_count == 0
    project.manage("migrate", "notes", before[-1])
    assert stored() == names("notes.Note", "meaning")
    project.manage("migrate", "notes")
    assert stored() == names("notes.Memo", "meaning")
    assert "No changes detected" in project.manage("makemigrations", "--check", "--dry-run")

    # Passages turned off: they go (forwards, back where nothing is restored, and forwards again).
    project.change("passages=True", "passages=False")
    assert project.sql("SELECT count(*) FROM semantic_passage") == [(0,)]
    assert stored() == {("dismissedpair", "notes.Memo", "meaning"), ("embeddingfailure", "notes.Memo", "meaning")}
    project.change("passages=False", "passages=True")
    project.embed()
    assert project.sql("SELECT count(*) FROM semantic_passage") == [(len(passages),)]

    # The field removed: its passages and failures go; a reviewer's decisions and the switch stay.
    project.change("    meaning = EmbeddingField(", "    old_meaning = None  # EmbeddingField(")
    assert stored() == {("dismissedpair", "notes.Memo", "meaning")}
    assert project.sql("SELECT count(*) FROM semantic_fieldswitch") == [(1,)]

    # A field added again, then migrated back past: what it stored goes as its column does.
    before = project.migrations()
    project.edit_model("    old_meaning = None  # EmbeddingField(", "    meaning = EmbeddingField(")
    project.manage("makemigrations", "notes")
    project.manage("migrate")
    project.embed()
    assert project.sql("SELECT count(*) FROM semantic_passage") == [(len(passages),)]
    project.manage("migrate", "notes", before[-1])
    assert stored() == {("dismissedpair", "notes.Memo", "meaning")}

    # The app migrated back to before its model existed (CreateModel undone), then the model
    # deleted by a migration: each time, everything stored for it goes.
    def everything() -> set[tuple[str, str, str]]:
        switches = {
            ("fieldswitch", *r) for r in project.sql("SELECT model_label, field_name FROM semantic_fieldswitch")
        }
        return (
            stored()
            | switches
            | {("classifier", *r) for r in project.sql("SELECT model_label, field_name FROM semantic_classifier")}
        )

    project.manage("migrate", "notes")
    project.embed()
    assert ("passage", "notes.Memo", "meaning") in everything() and len(everything()) == 4
    project.manage("migrate", "notes", "zero")
    assert everything() == set()
    project.manage("migrate", "notes")
    project.sql("INSERT INTO notes_memo (heading, body) VALUES ('Dark mode', 'Switch the dashboard to dark colours.')")
    project.embed()
    assert ("passage", "notes.Memo", "meaning") in everything()
    project.change("class Memo(models.Model):", "class Memo:")
    assert everything() == set()


SQLITE_TEST_SETTINGS = """from .settings import *  # noqa: F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
"""
SQLITE_TESTS = """from django.contrib.auth.models import User
from django.db import NotSupportedError
from django.test import TestCase, TransactionTestCase
from django_q.models import OrmQ

from notes.models import Note
from semantic import embed_pending
from semantic.schema import NOT_POSTGRESQL
from semantic.search_plan import NOT_POSTGRESQL as SEARCH_NOT_POSTGRESQL


class Unrelated(TestCase):
    def test_rows_and_the_admin(self):
        note = Note.objects.create(title="a", body="b")
        note.title = "changed"
        note.save()
        self.client.force_login(User.objects.create_superuser("admin", "a@example.com", "x"))
        self.assertEqual(self.client.get("/admin/notes/note/").status_code, 200)
        self.assertEqual(self.client.get(f"/admin/notes/note/{note.pk}/change/").status_code, 200)


class Committed(TransactionTestCase):
    def test_a_save_queues_its_wake_up_quietly(self):
        with self.assertNoLogs("semantic", level="WARNING"):
            Note.objects.create(title="a", body="b")
        self.assertEqual(OrmQ.objects.count(), 1)

    def test_embedding_and_searching_say_they_need_postgresql(self):
        Note.objects.create(title="a", body="b")
        summary = embed_pending(Note)["notes.Note.embedding"]
        problem = NOT_POSTGRESQL.format(label="notes.Note.embedding", alias="default", vendor="SQLite")
        self.assertIn(problem, summary["errors"])
        search = SEARCH_NOT_POSTGRESQL.format(alias="default", vendor="SQLite")
        with self.assertRaisesMessage(NotSupportedError, search):
            list(Note.objects.similar_to("x")[:3])
"""
SQLITE_ADMIN = """from django.contrib import admin

from notes.models import Note
from semantic.admin import SemanticAdminMixin


@admin.register(Note)
class NoteAdmin(SemanticAdminMixin, admin.ModelAdmin):
    list_display = ["title"]
"""


@pytest.mark.django_db
def test_a_projects_tests_on_sqlite_run_with_the_app_installed(new_project):
    """A project on PostgreSQL whose test settings use SQLite (a common pattern): its tests that do
    not search pass, the app's migrations run there, and embedding and search say what they need."""
    project = new_project(api_key=None)
    project.write("mysite/settings_test.py", SQLITE_TEST_SETTINGS)
    project.write("notes/tests.py", SQLITE_TESTS)
    project.write("notes/admin.py", SQLITE_ADMIN)
    result = project.run("test", "notes", "--settings=mysite.settings_test", "--noinput")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 3 tests" in result.stderr and "\nOK" in result.stderr


@pytest.mark.django_db
def test_the_readme_testing_recipes_pass_in_the_projects_own_test_runs(new_project):
    """The README's "Testing your code", as printed: Django's runner and pytest-django, with the local model."""
    project = new_project(api_key=None)
    project.write("notes/tests.py", readme_snippet("testcase"))
    project.write("notes/test_search.py", readme_snippet("pytest"))

    def run(*command: str) -> str:
        result = subprocess.run(
            [sys.executable, *command],
            cwd=project.root,
            env={**project.env, "DJANGO_SETTINGS_MODULE": "mysite.settings"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    django_runner = run("manage.py", "test", "notes.tests", "--noinput")
    assert "Ran 2 tests" in django_runner and "\nOK" in django_runner
    pytest_django = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "notes/test_search.py")
    assert "1 passed" in pytest_django


@pytest.mark.django_db
@pytest.mark.parametrize("source", ['("title", "body")', '"both"'], ids=["fields", "a property"])
def test_the_replaced_field_cannot_go_before_queries_are_switched(new_project, fake_gemini, source):
    """README "Changing the model or size", step 3 taken before step 2 is done; the new
    field's text from fields, or from a property (which the migration's model lacks)."""
    from semantic.migration_hooks import SWITCH_FIRST

    project = new_project(api_key="AIzaTEST-switch-first")
    project.embed()
    project.edit_model(
        "    objects = SemanticManager()\n",
        f'    embedding_v2 = EmbeddingField(source={source}, dimensions=256, replaces="embedding")\n\n'
        "    objects = SemanticManager()\n\n"
        "    @property\n"
        "    def both(self):\n"
        '        return f"{self.title}\\n\\n{self.body}"\n',
    )
    project.manage("makemigrations", "notes")
    project.manage("migrate")
    project.manage("semantic_embed", "notes.Note.embedding_v2", "--limit", "2")  # partly filled, never switched

    project.edit_model('    embedding = EmbeddingField(source=("title", "body"))\n', "")
    project.manage("makemigrations", "notes")
    error = project.refused("migrate")
    message = SWITCH_FIRST.format(label="notes.Note", field="embedding", heir="embedding_v2", rows=len(NOTES) - 2)
    assert message in error
    # Rolled back: the old vectors are still there to serve search.
    assert project.counts("embedding") == (len(NOTES), len(NOTES))

    # As the message says: switch (the code without the old field already), then migrate.
    project.manage("semantic_embed", "notes.Note.embedding_v2", "--switch")
    project.manage("migrate")
    columns = project.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'notes_note'")
    assert ("embedding",) not in columns
    assert len(search(project)) == 5


@pytest.mark.django_db
@pytest.mark.parametrize("alter_first", [False, True], ids=["as Django 5.2 writes it", "as Django 6.1 writes it"])
def test_the_replaced_field_cannot_go_with_the_replaces_naming_it_in_any_order(new_project, fake_gemini, alter_first):
    """The old field and the ``replaces=`` that named it deleted in one edit: Django 5.2 writes
    the replacement's AlterField after the RemoveField, Django 6.1 before it (by hand here)."""
    from semantic.migration_hooks import FILL_FIRST

    project = new_project(api_key="AIzaTEST-switch-order")
    project.embed()
    project.edit_model(
        "    objects = SemanticManager()\n",
        '    embedding_v2 = EmbeddingField(source=("title", "body"), dimensions=256, replaces="embedding")\n\n'
        "    objects = SemanticManager()\n",
    )
    project.manage("makemigrations", "notes")
    project.manage("migrate")  # embedding_v2 never filled, never switched to

    project.edit_model('    embedding = EmbeddingField(source=("title", "body"))\n', "")
    project.edit_model(', replaces="embedding"', "")
    project.manage("makemigrations", "notes")
    path = project.root / "notes" / "migrations" / f"{project.migrations()[-1]}.py"
    text = path.read_text()
    (alter,) = re.findall(r"        migrations\.AlterField\(\n.*?\n        \),\n", text, re.S)
    assert text.index(alter) > text.index("migrations.RemoveField(")
    if alter_first:
        text = text.replace(alter, "")
        removal = text.index("        migrations.RemoveField(")
        path.write_text(text[:removal] + alter + text[removal:])

    error = project.refused("migrate")
    assert FILL_FIRST.format(label="notes.Note", field="embedding", heir="embedding_v2", rows=len(NOTES)) in error
    assert project.counts("embedding") == (len(NOTES), len(NOTES))  # nothing dropped
    project.manage("semantic_embed", "notes.Note.embedding_v2")  # as the message says
    project.manage("migrate")
    assert len(search(project)) == 5


PRODUCT_AND_BOOK = """

class Product(models.Model):
    name = models.CharField(max_length=200)


class Book(Product):
    author = models.CharField(max_length=200)
    embedding = EmbeddingField(source=("name", "author"))  # name is in the parent's table
"""


@pytest.mark.django_db
def test_a_multi_table_child_embeds_a_field_of_its_parents_table(new_project, fake_gemini):
    """A partial index cannot read another table: the parent's column is read in Python, as a property is."""
    project = new_project(api_key="AIzaTEST-parent-field")
    project.write("notes/models.py", (project.root / "notes" / "models.py").read_text() + PRODUCT_AND_BOOK)
    project.manage("makemigrations", "notes")
    migration = (project.root / "notes" / "migrations" / f"{project.migrations()[-1]}.py").read_text()
    # The pending index is on notes_book's own columns: the parent's text is hashed in Python.
    assert "'embedding_source_hash'" in migration and "md5" not in migration.lower()
    project.manage("migrate")
    project.manage("makemigrations", "--check", "--dry-run")

    def book() -> tuple[str, str, str | None]:
        (row,) = project.sql(
            "SELECT p.name, b.embedding_source_hash, b.embedding_embedded_hash "
            "FROM notes_book b JOIN notes_product p ON p.id = b.product_ptr_id WHERE b.embedding IS NOT NULL"
        )
        return row

    project.manage("shell", "-c", "from notes.models import Book; Book.objects.create(name='Dark mode', author='Ann')")
    assert "nothing to embed" not in project.manage("semantic_embed", "notes.Book")
    name, first, embedded = book()
    assert (name, embedded) == ("Dark mode", first) and first is not None

    # The parent's field changed through the child: the row waits, and is embedded again.
    project.manage(
        "shell", "-c", "from notes.models import Book; b = Book.objects.get(); b.name = 'Light mode'; b.save()"
    )
    (waiting,) = project.sql("SELECT embedding_source_hash, embedding_embedded_hash FROM notes_book")
    assert waiting[0] not in (first, None) and waiting[1] == first
    assert "nothing to embed" not in project.manage("semantic_embed", "notes.Book")
    name, second, embedded = book()
    assert (name, embedded) == ("Light mode", second) and second == waiting[0]

    # Only the parent's column saved, through the child.
    project.manage(
        "shell",
        "-c",
        "from notes.models import Book; b = Book.objects.get(); b.name = 'Dim'; b.save(update_fields=['name'])",
    )
    assert "nothing to embed" not in project.manage("semantic_embed", "notes.Book")
    name, third, embedded = book()
    assert (name, embedded) == ("Dim", third) and third not in (first, second)


@pytest.mark.django_db
def test_a_composite_primary_key_stops_makemigrations_with_what_to_do(new_project):
    from semantic.model_checks import COMPOSITE_KEY

    project = new_project(api_key=None)
    project.write(
        "notes/models.py",
        (project.root / "notes" / "models.py").read_text() + "\n\nclass Line(models.Model):\n"
        '    pk = models.CompositePrimaryKey("order_no", "line_no")\n'
        "    order_no = models.IntegerField()\n"
        "    line_no = models.IntegerField()\n"
        "    text = models.TextField()\n"
        '    embedding = EmbeddingField(source="text")\n',
    )
    message = COMPOSITE_KEY.format(model="notes.Line", columns="order_no, line_no", field="embedding")
    for command in ("makemigrations", "semantic_status"):
        error = project.refused(command)
        assert "semantic.E011" in error and message in error


SCHEDULED = "SELECT func FROM django_q_schedule ORDER BY func"


def remove_the_field(project: Project) -> None:
    """README "Removing the app", step 1, with one wake-up still queued from before it."""
    project.manage("shell", "-c", "from notes.models import Note; Note.objects.create(title='Saved before the deploy')")
    assert project.sql("SELECT count(*) FROM django_q_ormq") == [(1,)]
    project.write("notes/models.py", INITIAL_MODEL)
    project.manage("makemigrations", "notes")
    project.manage("migrate")


def take_out_of_installed_apps(project: Project) -> None:
    settings = project.root / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + 'INSTALLED_APPS.remove("semantic")\ndel SEMANTIC\n')


@pytest.mark.django_db
def test_taking_the_app_out_as_the_readme_says_leaves_no_schedule_behind(new_project):
    project = new_project(api_key=None)
    assert project.sql(SCHEDULED) == [("semantic.tasks.embed_pending",)]
    remove_the_field(project)
    project.manage("shell", "-c", "from django_q.tasks import async_task; async_task('math.floor', 2.5)")
    project.manage("migrate", "semantic", "zero")
    assert project.sql(SCHEDULED) == []
    # The wake-up queued before step 1, which no worker ran, is gone; another app's task stays.
    queued = "from django_q.models import OrmQ; print(sorted(t.func() for t in OrmQ.objects.all()))"
    assert project.manage("shell", "-c", queued).splitlines()[-1] == "['math.floor']"
    assert not project.sql("SELECT 1 FROM pg_tables WHERE tablename LIKE 'semantic_%'")
    take_out_of_installed_apps(project)
    project.manage("migrate")
    project.manage("check")
    assert project.sql(SCHEDULED) == []


@pytest.mark.django_db
def test_a_project_that_took_the_app_out_already_cleans_up_with_the_readme_snippet(new_project):
    project = new_project(api_key=None)
    project.manage("shell", "-c", "from django_q.tasks import schedule; schedule('math.floor', 2.5, name='own')")
    remove_the_field(project)
    take_out_of_installed_apps(project)
    project.manage("migrate")
    assert project.sql(SCHEDULED) == [("math.floor",), ("semantic.tasks.embed_pending",)]
    project.manage("shell", "-c", readme_snippet("removed"))
    assert project.sql(SCHEDULED) == [("math.floor",)]
    assert project.sql("SELECT count(*) FROM django_q_ormq") == [(0,)]
