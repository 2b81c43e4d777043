"""A table that lacks the field's columns: an unmanaged model's, which migrations never change.

The sweep and ``semantic_status`` report such a field and go on with the others; the
message gives the SQL that fixes the table, and applying it is enough.
"""

import io
import json
import logging

import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection, models

from project.questions.models import Question
from semantic import EmbeddingField, SemanticManager, suspend_embedding
from semantic.database_checks import check_unmanaged_tables
from semantic.management.commands.semantic_embed import Command as EmbedCommand
from semantic.management.commands.semantic_status import Command as StatusCommand
from semantic.schema import NOT_UTF8, NOT_UTF8_FIX, UNMANAGED_MISSING, UNMANAGED_NO_TABLE, schema_problem
from semantic.tasks import SWEEP_FAILED, embed_pending
from tests.commands import call, call_failing

pytestmark = pytest.mark.django_db(transaction=True)

LEGACY_TABLE = "legacy_doc"
CRM_TABLE = '"crm"."contact"'


def temporary_model(name, attrs):
    """A model of the test app for one test: registered as installed models are, so the sweep,
    the commands and the checks see it, after every model of the app."""
    attrs = {"__module__": "tests.testapp.models", **attrs}
    attrs.setdefault("objects", SemanticManager())
    return type(name, (models.Model,), attrs)


def forget(model):
    del apps.all_models["testapp"][model._meta.model_name]
    apps.clear_cache()


def unmanaged(name, table):
    """An unmanaged model over ``table``, which another system made with a vector column but
    none of the hidden ones; one row in it. Yields the model."""

    class Meta:
        app_label = "testapp"
        managed = False
        db_table = table

    model = temporary_model(
        name,
        {
            "title": models.CharField(max_length=200),
            "body": models.TextField(blank=True),
            "embedding": EmbeddingField(source=("title", "body"), dimensions=128),
            "Meta": Meta,
        },
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, title varchar(200) NOT NULL, "
            "body text NOT NULL DEFAULT '', embedding vector)"
        )
        cursor.execute(f"INSERT INTO {table} (title, body) VALUES ('Reset password', 'Forgot it')")
    yield model
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    forget(model)


@pytest.fixture
def legacy(transactional_db):
    yield from unmanaged("LegacyDoc", LEGACY_TABLE)


@pytest.fixture
def contact(transactional_db):
    """The same over a table in a schema of its own: ``db_table = '"crm"."contact"'``."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA crm")
    yield from unmanaged("Contact", CRM_TABLE)
    with connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA crm")


@pytest.fixture
def waiting_question():
    """A row of a model after the test app's, that only a sweep finds."""
    with suspend_embedding():
        return Question.objects.create(title="Where is my refund?", body="")


def has_vector(model, pk):
    return model._base_manager.filter(pk=pk, embedding__isnull=False).exists()


def test_the_sweep_reports_a_table_without_the_columns_and_sweeps_the_others(legacy, waiting_question, caplog):
    field = legacy._meta.get_field("embedding")
    problem = schema_problem(field)
    assert problem.startswith(UNMANAGED_MISSING.split("{table}")[0].format(label="testapp.LegacyDoc.embedding"))
    caplog.set_level(logging.ERROR, logger="semantic")

    summary = embed_pending()

    legacy_summary = summary["testapp.LegacyDoc.embedding"]
    assert legacy_summary["stopped"] == problem and legacy_summary["errors"] == [problem]
    assert legacy_summary["embedded"] == 0
    assert summary["questions.Question.embedding"]["embedded"] == 1
    assert has_vector(Question, waiting_question.pk)
    assert f"Sweep skipped testapp.LegacyDoc.embedding: {problem}" in caplog.messages


def test_semantic_embed_names_the_table_and_embeds_the_other_fields(legacy, waiting_question):
    problem = schema_problem(legacy._meta.get_field("embedding"))
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError) as raised:
        call_command("semantic_embed", stdout=out, stderr=err)

    assert problem in err.getvalue()
    assert str(raised.value) == EmbedCommand.INCOMPLETE.format(labels="testapp.LegacyDoc.embedding")
    assert has_vector(Question, waiting_question.pk)  # a field after the broken one
    assert "questions.Question.embedding" in out.getvalue()


def test_the_sql_in_the_message_is_what_the_table_needs(legacy):
    field = legacy._meta.get_field("embedding")
    problem = schema_problem(field)
    table = connection.ops.quote_name(LEGACY_TABLE)
    columns = "'embedding_embedded_hash', 'embedding_spec', 'embedding_pending_since'"
    assert f"the table {table} lacks the field's columns {columns}." in problem
    sql = problem.split(":\n", 1)[1].splitlines()
    assert sql[:3] == [
        f'ALTER TABLE {table} ADD COLUMN "embedding_embedded_hash" varchar(32) NULL;',
        f'ALTER TABLE {table} ADD COLUMN "embedding_spec" varchar(200) NULL;',
        f'ALTER TABLE {table} ADD COLUMN "embedding_pending_since" timestamp with time zone NULL;',
    ]
    index = field.pending_index(legacy).name
    assert sql[3].startswith(f'CREATE INDEX "{index}" ON {table} ("embedding_embedded_hash") WHERE')
    assert [c for c in check_unmanaged_tables(databases=["default"]) if c.obj is field][0].msg == problem

    with connection.cursor() as cursor:
        cursor.execute("\n".join(sql))  # what the table's owner runs

    assert schema_problem(field) is None
    assert not [c for c in check_unmanaged_tables(databases=["default"]) if c.obj is field]
    assert embed_pending(legacy)["testapp.LegacyDoc.embedding"]["embedded"] == 1
    assert legacy.objects.similar_to("I forgot my password").first().title == "Reset password"
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [index])
        assert cursor.fetchone() is not None


def test_a_table_in_another_schema_is_checked_and_the_sql_in_the_message_is_enough(contact):
    field = contact._meta.get_field("embedding")
    problem = schema_problem(field)
    assert f"the table {CRM_TABLE} lacks the field's columns" in problem
    assert [c.msg for c in check_unmanaged_tables(databases=["default"]) if c.obj is field] == [problem]

    with connection.cursor() as cursor:
        cursor.execute(problem.split(":\n", 1)[1])

    assert schema_problem(field) is None
    assert not [c for c in check_unmanaged_tables(databases=["default"]) if c.obj is field]
    assert embed_pending(contact)["testapp.Contact.embedding"]["embedded"] == 1
    assert contact.objects.similar_to("I forgot my password").first().title == "Reset password"


def test_the_pending_index_of_a_table_in_another_schema_is_not_asked_for_twice(contact):
    """A column missing beside the index (one a later version adds): the SQL adds only it."""
    field = contact._meta.get_field("embedding")
    with connection.cursor() as cursor:
        cursor.execute(schema_problem(field).split(":\n", 1)[1])
        cursor.execute(f"ALTER TABLE {CRM_TABLE} DROP COLUMN embedding_pending_since")

    sql = schema_problem(field).split(":\n", 1)[1]
    assert sql.splitlines() == [
        f'ALTER TABLE {CRM_TABLE} ADD COLUMN "embedding_pending_since" timestamp with time zone NULL;'
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql)
    assert schema_problem(field) is None


def test_status_reports_the_table_and_counts_the_others(legacy, waiting_question):
    problem = schema_problem(legacy._meta.get_field("embedding"))

    out, err, error = call_failing("semantic_status")  # exit status 1, so `semantic_status || alert` works
    (line,) = [line for line in out.splitlines() if line.startswith("testapp.LegacyDoc.embedding")]
    assert line.split()[1:7] == ["-"] * 6
    assert problem in err
    assert error == StatusCommand.STOPPED.format(labels="testapp.LegacyDoc.embedding")
    (question,) = [line for line in out.splitlines() if line.startswith("questions.Question.embedding ")]
    assert question.split()[1:3] == ["1", "0"]  # one row, pending

    out, _, _ = call_failing("semantic_status", "--json")
    (row,) = [r for r in json.loads(out) if r["model"] == "testapp.LegacyDoc"]
    assert (row["total"], row["pending"], row["problem"]) == (None, None, problem)


@pytest.mark.parametrize(
    "args",
    [
        ("semantic_search", "testapp.LegacyDoc", "password"),
        ("semantic_duplicates", "testapp.LegacyDoc"),
        ("semantic_topics", "testapp.LegacyDoc"),
        ("semantic_classify", "testapp.LegacyDoc", "--label", "title", "--dry-run"),
        ("semantic_evaluate", "testapp.LegacyDoc", "--queries", "unread.jsonl", "--qrels", "unread.tsv"),
    ],
    ids=lambda args: args[0],
)
def test_commands_that_read_vectors_say_what_the_table_lacks(legacy, args):
    """In one line, as semantic_embed does, rather than a ProgrammingError from the middle of a query."""
    problem = schema_problem(legacy._meta.get_field("embedding"))
    with pytest.raises(CommandError) as info:
        call(*args)
    assert str(info.value) == problem


def test_a_missing_table_is_reported_but_not_checked(legacy):
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {LEGACY_TABLE}")
    field = legacy._meta.get_field("embedding")
    assert schema_problem(field) == UNMANAGED_NO_TABLE.format(
        label="testapp.LegacyDoc.embedding", database="default", table=f'"{LEGACY_TABLE}"', model="testapp.LegacyDoc"
    )
    # Test databases often lack unmanaged tables: check (run by migrate and test runs) says nothing.
    assert not [c for c in check_unmanaged_tables(databases=["default"]) if c.obj is field]


@pytest.fixture
def brittle(transactional_db):
    """A model whose text comes from a method that fails, with the API key in its message."""

    class Meta:
        app_label = "testapp"

    def text(self):
        raise RuntimeError(f"cannot read {settings.SEMANTIC['API_KEY']}")

    model = temporary_model(
        "Brittle",
        {
            "title": models.CharField(max_length=200),
            "embedding": EmbeddingField(source="text"),
            "text": text,
            "Meta": Meta,
        },
    )
    with connection.schema_editor() as editor:
        editor.create_model(model)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {model._meta.db_table} (title) VALUES ('unreadable')")
    yield model
    with connection.schema_editor() as editor:
        editor.delete_model(model)
    forget(model)


def test_a_field_whose_run_fails_is_reported_without_the_key(brittle, waiting_question, caplog):
    caplog.set_level(logging.ERROR, logger="semantic")

    summary = embed_pending()

    expected = SWEEP_FAILED.format(error="RuntimeError: cannot read [redacted]")
    assert summary["testapp.Brittle.embedding"]["stopped"] == expected
    assert summary["testapp.Brittle.embedding"]["errors"] == [expected]
    assert has_vector(Question, waiting_question.pk)
    assert settings.TEST_API_KEY not in json.dumps(summary)
    assert settings.TEST_API_KEY not in caplog.text
    assert "Sweeping testapp.Brittle.embedding: " + expected in caplog.text
    assert "Traceback" in caplog.text  # where the user's method failed


def test_the_admin_status_page_shows_the_problem(legacy, admin_client):
    from django.urls import reverse
    from django.utils.html import escape

    problem = schema_problem(legacy._meta.get_field("embedding"))
    response = admin_client.get(reverse("admin:semantic_status"))
    assert response.status_code == 200
    page = response.content.decode()
    assert escape(problem.splitlines()[0]) in page
    row = page.split("testapp.LegacyDoc.<wbr>embedding</th>", 1)[1].split("</tr>", 1)[0]
    assert row.count('<td class="semantic-count">–</td>') == 6


class EverythingOnLatin1:
    """Articles and the app's records of them on the LATIN1 database (the rate limit is shared)."""

    def db_for_read(self, model, **hints):
        if model._meta.app_label == "testapp" or model._meta.label in ("semantic.EmbeddingFailure", "semantic.Passage"):
            return "latin1"
        return None

    db_for_write = db_for_read


def test_a_database_not_in_utf8_is_reported_and_its_rows_are_not_sent(latin1_database, settings, fake_gemini):
    from tests.testapp.models import Article

    settings.DATABASE_ROUTERS = [f"{__name__}.EverythingOnLatin1"]
    with suspend_embedding():
        Article.objects.create(title="Café opening hours", body="Le café ouvre à 8 h.")
    field = Article._meta.get_field("embedding")
    problem = schema_problem(field)
    what = NOT_UTF8.format(database="latin1", encoding="LATIN1")
    assert problem == f"testapp.Article.embedding: {what} {NOT_UTF8_FIX}"
    assert "ENCODING 'UTF8'" in problem and "pg_dump" in problem

    for _ in range(2):
        summary = embed_pending("testapp.Article")["testapp.Article.embedding"]
        assert summary["stopped"] == problem and summary["embedded"] == 0
    assert fake_gemini.request_count == 0  # no text is paid for, again and again, only to be thrown away

    (status,) = json.loads(call_failing("semantic_status", "testapp.Article", "--json")[0])
    assert status["problem"] == problem
