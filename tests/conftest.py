from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from django.utils import translation
from django.utils.translation import trans_real

from tests.fake_gemini import FakeGemini


@pytest.fixture(scope="session")
def gemini_server() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture(autouse=True)
def fake_gemini(gemini_server: FakeGemini, settings) -> Iterator[FakeGemini]:
    """Every test talks to the fake Gemini server, reset to answer normally."""
    gemini_server.reset()
    settings.SEMANTIC = {**settings.SEMANTIC, "BASE_URL": gemini_server.base_url}
    yield gemini_server
    gemini_server.reset()


@pytest.fixture
def semantic_settings(settings):
    """Change SEMANTIC keys for one test: ``semantic_settings(SYNC=False)``."""

    def change(**values):
        settings.SEMANTIC = {**settings.SEMANTIC, **values}

    return change


@pytest.fixture
def backlog(fake_gemini):
    """25 Articles saved without embedding, in primary-key order."""
    from semantic import suspend_embedding
    from tests.testapp.models import Article

    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Backlog article number {i}", body="") for i in range(25))
    return Article.objects.order_by("pk")


@pytest.fixture
def questions(fake_gemini):
    """Three questions of the demo, embedded: two ask the same thing, one does not."""
    from django.core.cache import cache

    from project.questions.models import Question
    from semantic import embed_pending

    cache.clear()
    Question.objects.bulk_create(
        [
            Question(title="How do I reset my password", body="I forgot my password"),
            Question(title="Reset forgotten password", body="Cannot remember my password"),
            Question(title="Export invoices to CSV", body="Need a spreadsheet of invoices"),
        ]
    )
    embed_pending()
    return {q.title: q for q in Question.objects.all()}


@pytest.fixture
def statement_timeout_2s(db):
    """The default connection's statement_timeout at 2 s, as ALTER ROLE ... SET statement_timeout
    sets it on managed services; tests.slow_statements.SLOW_ROWS always outlasts it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = '2s'")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET statement_timeout")


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def latin1_database(transactional_db):
    """A database whose text is LATIN1, as older projects have, reached as the alias "latin1",
    with pgvector, Article's table and the app's own tables."""
    import psycopg
    from django.core.management import call_command
    from django.db import connection, connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    from tests.testapp.models import Article

    admin = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    admin.execute("DROP DATABASE IF EXISTS semantic_latin1")
    admin.execute("CREATE DATABASE semantic_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    wrapper = DatabaseWrapper({**connection.settings_dict, "NAME": "semantic_latin1"}, alias="latin1")
    connections["latin1"] = wrapper
    try:
        call_command("migrate", "semantic", database="latin1", verbosity=0)  # pgvector and the app's tables
        with wrapper.schema_editor() as editor:
            editor.create_model(Article)
        yield wrapper
    finally:
        wrapper.close()
        del connections["latin1"]
        admin.execute("DROP DATABASE IF EXISTS semantic_latin1")
        admin.close()


@pytest.fixture
def in_german(settings):
    """German pages, and a way to put some of the app's own words in Django's German catalog for
    the test, as a project's catalog would (the app ships none): to see which words a translator reaches."""
    settings.LANGUAGE_CODE = "de"
    catalog = trans_real.translation("de")._catalog._catalogs[0]
    before: dict[str, str | None] = {}

    def translate(entries: dict[str, str]) -> None:
        for msgid, text in entries.items():
            before.setdefault(msgid, catalog.get(msgid))
            catalog[msgid] = text

    with translation.override("de"):
        yield translate
    for msgid, text in before.items():
        if text is None:
            del catalog[msgid]
        else:
            catalog[msgid] = text
