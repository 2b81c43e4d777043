"""More than one database: routers that keep django-q2 or the app's own tables off a
database, and models whose rows a router keeps on the second database ("other")."""

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.core import checks
from django.core.management import call_command
from django.db import connections, transaction
from django.db.backends.signals import connection_created
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from django_q.signing import SignedPackage

from semantic import backfill, embed_pending, suspend_embedding
from semantic.dispatch import SWEEP_SCHEDULE_NAME, install_sweep_schedule
from semantic.management.commands.semantic_embed import Command as Embed
from semantic.management.commands.semantic_status import Command as Status
from semantic.model_checks import OWN_TABLES_MISSING_HINT, TABLES_MISSING, TABLES_MISSING_HINT
from semantic.models import EmbeddingBatchJob, EmbeddingFailure, Passage
from semantic.registry import get_embedding_field
from semantic.status import field_status
from tests.commands import call
from tests.testapp.models import Article, Note, Report
from tests.topicapp.models import Ticket

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


class QueueOnDefault:
    """django-q2's tables on "default" only, as a project with a second database keeps them."""

    def allow_migrate(self, db, app_label, **hints):
        return db == "default" if app_label == "django_q" else None


class TestappOnOther:
    """The test app on "other", every other app (this one's too) on "default"."""

    def allow_migrate(self, db, app_label, **hints):
        return db == "other" if app_label == "testapp" else db == "default"


class SemanticEverywhere(TestappOnOther):
    """The same, with the rule semantic.E008 asks for."""

    def allow_migrate(self, db, app_label, **hints):
        return True if app_label == "semantic" else super().allow_migrate(db, app_label, **hints)


class NotesOnOther:
    """Note and Report rows read and written on "other"; the app's tables migrated on both."""

    routed = {"testapp.note", "testapp.report"}

    def db_for_read(self, model, **hints):
        return "other" if model._meta.label_lower in self.routed else None

    db_for_write = db_for_read


class ReadsFromReplica:
    """Every model read from "replica" (the same database, read-only) and written on "default"."""

    def db_for_read(self, model, **hints):
        return "replica"

    def db_for_write(self, model, **hints):
        return "default"


class ReadsFromALaggingReplica:
    """Every model read from "other", which lacks what "default" was written since (a replica whose
    replay lags), and written on "default"."""

    def db_for_read(self, model, **hints):
        return "other"

    def db_for_write(self, model, **hints):
        return "default"


def routers(*classes):
    return override_settings(DATABASE_ROUTERS=[f"{__name__}.{cls.__name__}" for cls in classes])


def test_migrate_on_a_database_without_django_qs_tables_succeeds():
    with routers(QueueOnDefault), transaction.atomic(using="other"):
        with connections["other"].cursor() as cursor:
            # As on a database the router never let django_q's migrations run on (rolled back below).
            cursor.execute(f"DROP TABLE {Schedule._meta.db_table} CASCADE")
        call_command("migrate", database="other", verbosity=0)
        transaction.set_rollback(True, using="other")
    assert Schedule.objects.using("default").filter(name=SWEEP_SCHEDULE_NAME).exists()


class StateAfterZero:
    """The migrated state ``post_migrate`` hands over after ``migrate semantic zero``: no semantic."""

    def get_app_config(self, label):
        if label == "semantic":
            raise LookupError(label)
        return apps.get_app_config(label)

    def get_model(self, app_label, name):
        return apps.get_model(app_label, name)


def queue_task(using, func):
    payload = SignedPackage.dumps({"id": func, "name": func, "func": func, "args": (), "kwargs": {}})
    OrmQ.objects.using(using).create(key="semantic-tests", payload=payload, lock=None)


class QueueOnOther:
    """django-q2's tables on a database of their own ("other"), every other app on "default"."""

    def allow_migrate(self, db, app_label, **hints):
        return db == "other" if app_label == "django_q" else db == "default"


def test_migrate_semantic_zero_empties_the_queue_on_the_brokers_database(monkeypatch):
    """Q_CLUSTER = {"orm": "other"}, and a router keeping django_q's tables there: the wake-ups
    wait there, whichever database migrate ran on. Unapplying the app on another database
    than the one it keeps its records on leaves them (that one still runs them)."""
    monkeypatch.setattr(Conf, "ORM", "other")  # django-q2 reads Q_CLUSTER once, at import
    queue_task("other", "semantic.tasks.embed_pending")
    queue_task("other", "math.floor")
    with routers(QueueOnOther):
        install_sweep_schedule(using="other", apps=StateAfterZero())
        assert len(OrmQ.objects.using("other").all()) == 2
        install_sweep_schedule(using="default", apps=StateAfterZero())
    assert [task.func() for task in OrmQ.objects.using("other").all()] == ["math.floor"]


def test_a_model_on_a_database_without_the_apps_tables_is_reported_with_the_router_rule():
    with routers(TestappOnOther):
        errors = [e for e in checks.run_checks() if e.id == "semantic.E008"]
    note = next(e for e in errors if e.obj is Note)
    assert note.msg == TABLES_MISSING.format(model="testapp.Note", alias="other")
    assert note.hint == TABLES_MISSING_HINT.format(alias="other")
    assert "allow_migrate() return True for app_label 'semantic' on 'other'" in note.hint
    assert {e.obj._meta.app_label for e in errors} == {"testapp"}  # the other apps stay on "default"
    with routers(SemanticEverywhere):
        assert not [e for e in checks.run_checks() if e.id == "semantic.E008"]


class SemanticBesideTheModelsOnly(TestappOnOther):
    """The app migrated only where a model with an EmbeddingField is (its own models still on "default")."""

    def allow_migrate(self, db, app_label, **hints):
        return db == "other" if app_label == "semantic" else super().allow_migrate(db, app_label, **hints)


def test_the_apps_own_tables_where_the_router_sends_them_are_reported_when_not_migrated_there():
    """The admin's pages and every run read the app's own records on db_for_write(), "default" here."""
    with routers(SemanticBesideTheModelsOnly):
        (error,) = [e for e in checks.run_checks() if e.id == "semantic.E019"]
    assert error.msg.startswith("The semantic app's own records (semantic.")
    assert "on database 'default', where your router sends them" in error.msg
    assert error.hint == OWN_TABLES_MISSING_HINT.format(alias="default")
    for router in (SemanticEverywhere, TestappOnOther):
        with routers(router):
            assert not [e for e in checks.run_checks() if e.id == "semantic.E019"]


@pytest.fixture
def routed(fake_gemini):
    """Notes (one refused by the API) and a Report with passages, kept on "other" by the router."""
    with routers(NotesOnOther):
        for text in ("reset my password", "dark mode", "REJECT this one"):
            fake_gemini.reject_marker = "REJECT"
            Note.objects.create(text=text)
        fake_gemini.reject_marker = None
        Report.objects.create(title="Handbook", body="Passwords are reset from the profile page.")
        yield fake_gemini
    assert not Note.objects.using("default").exists()


def test_failures_are_kept_and_counted_beside_the_rows(routed):
    field = get_embedding_field(Note)
    assert EmbeddingFailure.objects.using("other").filter(model_label="testapp.Note").count() == 1
    assert not EmbeddingFailure.objects.using("default").exists()
    status = field_status(Note, field)
    assert (status["embedded"], status["failed"]) == (2, 1)
    assert backfill.count(Note, field, everything=False, failed=True, limit=None) == 1


def test_the_sweep_removes_passages_of_rows_deleted_behind_the_orms_back_on_their_database(routed):
    """The passages are on "other", beside the Report rows; the sweep looked on Passage's own database."""
    report = Report.objects.using("other").get()
    assert Passage.objects.using("other").filter(object_pk=str(report.pk)).exists()
    with connections["other"].cursor() as cursor:
        cursor.execute("DELETE FROM testapp_report")
    with routers(NotesOnOther):
        summary = embed_pending("testapp.Report")["testapp.Report.embedding"]
    assert (summary["errors"], summary["passages_swept"]) == ([], 1)
    assert not Passage.objects.using("other").filter(object_pk=str(report.pk)).exists()


def test_a_batch_job_is_recorded_beside_its_rows_so_a_rerun_collects_it(routed):
    """A --batch-api run stopped after submitting: workers leave the job's rows alone, and the
    next run collects that job instead of paying for another."""
    from semantic import batch
    from semantic.rows import in_flight

    field = get_embedding_field(Note)
    with routers(NotesOnOther):
        with suspend_embedding():
            Note.objects.create(text="sent in a batch job")
        (job,) = batch.submit(Note, field)  # what --batch-api does before it waits
        assert EmbeddingBatchJob.objects.using("other").filter(name=job.name).exists()
        assert not EmbeddingBatchJob.objects.using("default").exists()
        assert in_flight(Note, field, using="other") is not None
        out, _ = call("semantic_embed", "testapp.Note", "--batch-api", "--poll-interval", "0.01")
    assert f"collecting Batch API job {job.name}" in out
    assert "submitted Batch API job" not in out
    assert len(routed.batch_requests) == 1  # collected, not paid for again
    assert Note.objects.using("other").get(text="sent in a batch job").embedding is not None
    assert EmbeddingBatchJob.objects.using("other").get(name=job.name).finished_at is not None


def test_the_status_page_reads_each_models_rows_and_records_on_their_database(routed, client):
    client.force_login(User.objects.create_superuser("root", password="pw"))
    with CaptureQueriesContext(connections["default"]) as on_default:
        page = client.get(reverse("admin:semantic_status"))
    assert page.status_code == 200
    # Nothing on "default" names the routed tables: no query joins one database's tables with another's.
    assert not [q["sql"] for q in on_default.captured_queries if "testapp_note" in q["sql"]]
    assert not [q["sql"] for q in on_default.captured_queries if "testapp_report" in q["sql"]]
    rows = {row["model"]: row for row in page.context["report"]}
    assert (rows["testapp.Note"]["embedded"], rows["testapp.Note"]["failed"]) == (2, 1)
    stored = Passage.objects.using("other").filter(model_label="testapp.Report").count()
    assert stored > 0 and rows["testapp.Report"]["passages"]["passages"] == stored
    assert [failure.object_pk for failure in page.context["errors"]] == [
        str(Note.objects.using("other").get(text="REJECT this one").pk)
    ]

    retried = client.post(reverse("admin:semantic_status"), follow=True)
    assert "Queued 1 failed row again." in retried.content.decode()
    assert not EmbeddingFailure.objects.using("other").exists()
    assert not Note.objects.using("other").filter(embedding__isnull=True).exists()


def test_the_failure_list_counts_the_records_kept_on_another_database(routed, client):
    """The list shows EmbeddingFailure's own database; the routed model's record is on "other"."""
    client.force_login(User.objects.create_superuser("root", password="pw"))
    page = client.get(reverse("admin:semantic_embeddingfailure_changelist"))
    assert page.status_code == 200
    assert page.context["semantic_failures_elsewhere"] == [("other", 1)]
    assert "1 more failure record is kept on database “other”, beside its rows" in page.content.decode()


def read_only(sender, connection, **kwargs):
    """Make "replica" refuse writes, as a hot standby does."""
    if connection.alias == "replica":
        with connection.cursor() as cursor:
            cursor.execute("SET default_transaction_read_only = on")


@pytest.fixture
def replica(fake_gemini):
    """Reads from a read-only "replica"; two Articles the API refused, recorded where the worker writes."""
    connections["replica"].close()
    connection_created.connect(read_only)
    try:
        with routers(ReadsFromReplica):
            fake_gemini.reject_marker = "REJECT"
            for title in ("REJECT one", "REJECT two", "export invoices"):
                Article.objects.create(title=title)
            fake_gemini.reject_marker = None
            yield [article.pk for article in Article.objects.filter(title__startswith="REJECT")]
    finally:
        connection_created.disconnect(read_only)
        connections["replica"].close()


def refused_writes():
    with pytest.raises(Exception, match="read-only transaction"):
        EmbeddingFailure.objects.using("replica").update(retry_at=None)
    return EmbeddingFailure.objects.using("default").count()


@pytest.mark.django_db(transaction=True, databases=["default", "other", "replica"])
def test_reembed_drops_failure_records_where_they_were_written(replica, client):
    assert refused_writes() == 2
    client.force_login(User.objects.create_superuser("root", password="pw"))
    changelist = reverse("admin:testapp_article_changelist")
    response = client.post(changelist, {"action": "reembed", "_selected_action": replica})
    assert response.status_code == 302
    assert not EmbeddingFailure.objects.using("default").exists()
    assert not Article.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db(transaction=True, databases=["default", "other", "replica"])
def test_retrying_failed_rows_from_the_status_page_writes_where_they_were_written(replica, client):
    assert refused_writes() == 2
    client.force_login(User.objects.create_superuser("root", password="pw"))
    retried = client.post(reverse("admin:semantic_status"), follow=True)
    assert "Queued 2 failed rows again." in retried.content.decode()
    assert not EmbeddingFailure.objects.using("default").exists()
    assert not Article.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db(transaction=True, databases=["default", "other", "replica"])
def test_embed_failed_retries_where_the_records_were_written(replica):
    assert refused_writes() == 2
    out, _ = call("semantic_embed", "testapp.Article", "--failed")
    assert "testapp.Article.embedding: 2/2 rows" in out
    assert not EmbeddingFailure.objects.using("default").exists()
    assert not Article.objects.filter(embedding__isnull=True).exists()


@pytest.mark.django_db(transaction=True, databases=["default", "other", "replica"])
def test_applying_suggested_labels_writes_where_the_rows_are_written(replica, client):
    for number in range(4):
        Ticket.objects.create(text=f"My card has not arrived yet ({number})", category="card_arrival")
    waiting = [Ticket.objects.create(text=f"Where is my new card? ({number})").pk for number in range(2)]
    client.force_login(User.objects.create_superuser("root", password="pw"))
    changelist = reverse("admin:topicapp_ticket_changelist")
    chosen = {"action": "apply_suggested_labels", "index": 0, "_selected_action": waiting}
    response = client.post(changelist, {**chosen, "min_confidence": "0", "post": "yes"})
    assert response.status_code == 302
    assert set(Ticket.objects.filter(pk__in=waiting).values_list("category", flat=True)) == {"card_arrival"}


class TheAppOnOther:
    """The app's own tables read and written on "other" (migrated on both)."""

    def db_for_read(self, model, **hints):
        return "other" if model._meta.app_label == "semantic" else None

    db_for_write = db_for_read


def test_the_shared_rate_limit_is_kept_where_the_router_writes_the_apps_tables(fake_gemini, semantic_settings):
    from semantic import ratelimit
    from semantic.backends import get_backend
    from semantic.models import RateLimit

    semantic_settings(REQUESTS_PER_MINUTE=100)
    backend = get_backend()
    with routers(TheAppOnOther):
        assert ratelimit.acquire(backend, tokens=10) == 0
        ratelimit.pause(backend, 30)
    (state,) = RateLimit.objects.using("other").all()
    assert (state.requests, state.tokens, state.paused_until is not None) == (1, 10, True)
    assert not RateLimit.objects.using("default").exists()


@pytest.fixture
def lagging(backlog):
    """25 Articles pending on "default" that the lagging replica does not have yet."""
    titles = [article.title for article in backlog]
    with routers(ReadsFromALaggingReplica):
        yield titles


def test_semantic_embed_counts_and_embeds_the_rows_pending_where_it_writes(lagging, fake_gemini):
    from django_q.models import OrmQ

    label = "testapp.Article.embedding"
    assert not Article.objects.exists()  # read from the replica
    planned, _ = call("semantic_embed", "testapp.Article", "--dry-run")
    assert Embed.DRY_RUN.split("{characters}")[0].format(label=label, rows=25) in planned
    queued, _ = call("semantic_embed", "testapp.Article", "--queue")
    assert Embed.QUEUED.format(label=label, rows=25, tasks=1) in queued
    assert len(OrmQ.objects.using("default").get().task["args"][2]) == 25
    assert fake_gemini.request_count == 0

    out, _ = call("semantic_embed", "testapp.Article")
    assert Embed.NOTHING.format(label=label) not in out
    assert f"{label}: 25 embedded" in out
    assert sorted(fake_gemini.texts()) == sorted(lagging)
    assert not Article.objects.using("default").filter(embedding__isnull=True).exists()
    again, _ = call("semantic_embed", "testapp.Article", "--all", "--limit", "5")
    assert f"{label}: 5 embedded" in again


def test_semantic_embed_batch_api_sends_the_rows_pending_where_it_writes(lagging, fake_gemini):
    label = "testapp.Article.embedding"
    out, _ = call("semantic_embed", "testapp.Article", "--batch-api", "--poll-interval", "0.01")
    (job,) = EmbeddingBatchJob.objects.using("default").all()
    assert Embed.BATCH_SUBMITTED.format(label=label, name=job.name, rows=25) in out
    assert not Article.objects.using("default").filter(embedding__isnull=True).exists()

    again, _ = call(
        "semantic_embed", "testapp.Article", "--batch-api", "--all", "--limit", "5", "--poll-interval", "0.01"
    )
    job = EmbeddingBatchJob.objects.using("default").latest("submitted_at")
    assert Embed.BATCH_SUBMITTED.format(label=label, name=job.name, rows=5) in again


def test_semantic_embed_failed_retries_the_failures_recorded_where_it_writes(lagging, fake_gemini):
    fake_gemini.reject_marker = "number 3"
    embed_pending("testapp.Article")
    fake_gemini.reset()
    assert EmbeddingFailure.objects.using("default").count() == 1

    out, _ = call("semantic_embed", "testapp.Article", "--failed")
    assert "testapp.Article.embedding: 1 embedded" in out
    assert fake_gemini.texts() == ["Backlog article number 3"]
    assert not EmbeddingFailure.objects.using("default").exists()


def test_semantic_status_says_which_database_it_counted_on(lagging):
    out, _ = call("semantic_status", "testapp.Article")
    assert Status.READ_ELSEWHERE.format(label="testapp.Article.embedding", read="other", write="default") in out
    with routers():
        out, _ = call("semantic_status", "testapp.Article")
    assert "counted on" not in out
