"""A process started before a field's definition changed (a worker running through a deploy)
embeds nothing, instead of re-embedding with its old definition every row the new one embedded."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from semantic import definitions, embed_pending, suspend_embedding
from semantic.definitions import OLDER, definition
from semantic.models import FieldDefinition
from semantic.registry import get_embedding_field, iter_fields
from tests.commands import manage, processed, running_qcluster
from tests.test_worker import wait_for
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

OLD_SPEC = "gemini:gemini-embedding-001|SEMANTIC_SIMILARITY|128"
NEW_SPEC = "gemini:gemini-embedding-002|SEMANTIC_SIMILARITY|128"


@pytest.fixture
def started():
    """Play a process started at a given time (``started(when)``); this one's start comes back after."""
    before = definitions.started

    def play(when):
        definitions.started = when

    yield play
    definitions.started = before


@pytest.fixture
def articles(fake_gemini):
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Article {i}", body="about passwords") for i in range(5))
    return Article.objects.order_by("pk")


def specs():
    return sorted(Article.objects.values_list("embedding_spec", flat=True), key=str)


def older_message(mine=None):
    """What a run of Article's field says in a process whose definition is ``mine`` (this one's by default)."""
    stored = FieldDefinition.objects.get(model_label="testapp.Article", field_name="embedding")
    since = stored.since.isoformat(timespec="seconds")
    mine = mine or definition(get_embedding_field(Article))
    return OLDER.format(label="testapp.Article", since=since, mine=mine, stored=stored.definition)


def test_a_worker_started_before_a_model_change_leaves_the_new_vectors_alone(
    articles, fake_gemini, semantic_settings, started, caplog
):
    old_start = timezone.now()
    started(old_start)  # the old worker: embeds the table with the model it was started with
    embed_pending("testapp.Article")
    assert specs() == [OLD_SPEC] * 5

    semantic_settings(MODEL="gemini-embedding-002")  # a process started with the new setting
    started(old_start + timedelta(seconds=1))
    embed_pending("testapp.Article")
    assert specs() == [NEW_SPEC] * 5

    semantic_settings(MODEL="gemini-embedding-001")  # the old worker, still running
    started(old_start)
    fake_gemini.reset()
    edited = articles.first()
    edited.body = "edited by a user"
    edited.save()  # SYNC: the save's task runs in the old worker
    summary = embed_pending("testapp.Article")  # and so does its sweep
    assert fake_gemini.request_count == 0
    assert specs() == [NEW_SPEC] * 5
    message = older_message()
    assert summary["testapp.Article.embedding"]["stopped"] == message
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [message, message]
    assert "this process runs an older definition" in message and "Restart this worker" in message

    semantic_settings(MODEL="gemini-embedding-002")  # the worker restarted: only the edited row is embedded
    started(old_start + timedelta(seconds=2))
    embed_pending("testapp.Article")
    assert fake_gemini.texts() == ["Article 0\n\nedited by a user"]
    assert specs() == [NEW_SPEC] * 5


def test_migrate_records_the_new_definition_so_a_worker_running_through_it_stops(
    articles, fake_gemini, semantic_settings, started
):
    # This process plays a worker started before a deploy that changes the model (000 -> 001).
    semantic_settings(MODEL="gemini-embedding-000")
    started(timezone.now())
    embed_pending("testapp.Article")
    assert specs() == ["gemini:gemini-embedding-000|SEMANTIC_SIMILARITY|128"] * 5

    migrate = manage(fake_gemini, "migrate", "-v0")  # the new code (tests.settings: model 001), a real migrate
    assert migrate.wait(timeout=120) == 0, migrate.communicate()
    stored = FieldDefinition.objects.get(model_label="testapp.Article", field_name="embedding")
    assert stored.definition == f"{OLD_SPEC} source=title,body"
    assert stored.since > definitions.started

    fake_gemini.reset()
    Article.objects.filter(pk=articles.first().pk).update(body="edited")
    assert embed_pending("testapp.Article")["testapp.Article.embedding"]["stopped"] == older_message()
    assert fake_gemini.request_count == 0

    semantic_settings(MODEL="gemini-embedding-001")  # restarted with the new code
    started(stored.since + timedelta(seconds=1))
    assert embed_pending("testapp.Article")["testapp.Article.embedding"]["embedded"] == 5
    assert specs() == [OLD_SPEC] * 5


def test_the_newest_process_records_its_definition_and_is_never_held_back(articles, semantic_settings, started):
    embed_pending()
    label = dict(model_label="testapp.Article", field_name="embedding")
    assert FieldDefinition.objects.get(**label).definition == f"{OLD_SPEC} source=title,body"

    # A setting changed without a migration (a key set, the model changed): the new process records it.
    semantic_settings(MODEL="gemini-embedding-002")
    started(timezone.now() + timedelta(seconds=1))
    assert embed_pending()["testapp.Article.embedding"]["embedded"] == 5
    recorded = FieldDefinition.objects.get(**label)
    assert (recorded.definition, recorded.since) == (f"{NEW_SPEC} source=title,body", definitions.started)
    recorded = set(FieldDefinition.objects.values_list("model_label", "field_name"))
    assert recorded == {(model._meta.label, field.name) for model, field in iter_fields()}


def test_without_the_table_nothing_is_held_back(articles, fake_gemini, started):
    call_command("migrate", "semantic", "0009", verbosity=0)  # as before this app's migrations ran
    try:
        started(timezone.now() - timedelta(days=1))
        assert embed_pending()["testapp.Article.embedding"]["embedded"] == 5
    finally:
        call_command("migrate", "semantic", verbosity=0)
    assert FieldDefinition.objects.filter(model_label="testapp.Article").exists()


def test_a_real_worker_started_before_the_change_embeds_nothing(fake_gemini, semantic_settings, tmp_path):
    from django_q.models import Schedule

    Schedule.objects.filter(name="semantic.embed_pending").delete()  # only the save's wake-up runs
    semantic_settings(SYNC=False)
    log = tmp_path / "qcluster.log"
    wake_ups = "semantic.tasks.embed_field"  # the app's successes leave no Task row: the log counts them
    with running_qcluster(fake_gemini, log):
        Article.objects.create(title="Before the change", body="worker test")
        assert wait_for(lambda: processed(log, wake_ups) >= 1), "the worker never ran"
        assert specs() == [OLD_SPEC]
        with suspend_embedding():
            Article.objects.bulk_create(Article(title=f"Article {i}", body="about passwords") for i in range(5))

        semantic_settings(MODEL="gemini-embedding-002")  # this process now plays the new code
        embed_pending("testapp.Article")
        assert specs() == [NEW_SPEC] * 6
        fake_gemini.reset()
        runs = processed(log, wake_ups)
        Article.objects.create(title="Saved after the change", body="worker test")
        assert wait_for(lambda: processed(log, wake_ups) > runs), "the worker took no task"

    assert older_message(mine=f"{OLD_SPEC} source=title,body") in log.read_text()
    assert fake_gemini.request_count == 0
    assert specs() == [None, *[NEW_SPEC] * 6]


class SemanticOnOther:
    """This app's own tables read and written on "other"; the rows stay on "default"."""

    def db_for_read(self, model, **hints):
        return "other" if model._meta.app_label == "semantic" else None

    db_for_write = db_for_read


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_the_definitions_live_where_the_router_puts_the_apps_tables(articles, semantic_settings, started):
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.SemanticOnOther"]):
        FieldDefinition.objects.using("other").delete()
        started(timezone.now())
        assert embed_pending("testapp.Article")["testapp.Article.embedding"]["embedded"] == 5
        recorded = FieldDefinition.objects.using("other").get(model_label="testapp.Article")
        assert recorded.since == definitions.started

        semantic_settings(MODEL="gemini-embedding-002")  # an older process: held back by what "other" holds
        started(recorded.since - timedelta(seconds=1))
        assert embed_pending("testapp.Article")["testapp.Article.embedding"]["stopped"].startswith(
            "testapp.Article: this process runs an older definition"
        )
    assert specs() == [OLD_SPEC] * 5
