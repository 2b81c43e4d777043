import io
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from project.questions.models import Question
from semantic import suspend_embedding
from semantic.embedder import Embedder
from semantic.models import EmbeddingFailure
from semantic.registry import get_embedding_field
from semantic.status import field_status, status_report, with_state
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_state_is_counted(fake_gemini, semantic_settings):
    field = get_embedding_field(Article)
    embedded = Article.objects.create(title="embedded", body="")
    empty = Article.objects.create(title="", body="")
    with suspend_embedding():
        pending = Article.objects.create(title="pending", body="")
        failed = Article.objects.create(title="REJECT", body="")
    fake_gemini.reject_marker = "REJECT"
    Embedder(Article, field).run([failed.pk], limit=1)
    assert EmbeddingFailure.objects.filter(object_pk=str(failed.pk)).exists()

    states = dict(with_state(Article.objects.all()).values_list("pk", "embedding_state"))
    assert states == {embedded.pk: "embedded", empty.pk: "empty", pending.pk: "pending", failed.pk: "failed"}

    status = field_status(Article, field)
    assert (status["total"], status["embedded"], status["pending"], status["failed"], status["empty"]) == (
        4,
        1,
        1,
        1,
        1,
    )

    semantic_settings(MODEL="another-model")
    status = field_status(Article, field)
    assert status["stale"] == 1 and status["embedded"] == 0
    assert status["spec"].startswith("gemini:another-model|")
    assert [r["field"] for r in status_report() if r["model"] == "testapp.Article"] == ["embedding"]


def test_pending_since_tracks_how_long_a_row_has_waited(fake_gemini):
    field = get_embedding_field(Article)
    since = field.pending_since_name
    embedded = Article.objects.create(title="embedded at once", body="")
    embedded.refresh_from_db()
    assert getattr(embedded, since) is None  # the worker cleared it with the vector

    with suspend_embedding():
        row = Article.objects.create(title="waiting", body="")
        (bulk,) = Article.objects.bulk_create([Article(title="bulk waiting", body="")])
    row.refresh_from_db()
    first = getattr(row, since)
    assert first is not None
    assert Article.objects.get(pk=bulk.pk).embedding_pending_since is not None

    with suspend_embedding():
        row.title = "waiting, edited again"
        row.save()
    row.refresh_from_db()
    assert getattr(row, since) == first  # still waiting since the first change

    with suspend_embedding():
        embedded.category = "news"  # not part of the text
        embedded.save()
        untouched = Article.objects.get(pk=embedded.pk)
        assert getattr(untouched, since) is None
        untouched.title = "embedded, then edited"
        untouched.save()
    assert Article.objects.get(pk=embedded.pk).embedding_pending_since is not None

    Article.objects.filter(pk=row.pk).update(**{since: timezone.now() - timedelta(hours=2)})
    status = field_status(Article, field)
    assert status["pending"] == 3
    assert 7200 <= status["oldest_pending_seconds"] < 7260

    Embedder(Article, field).run()
    status = field_status(Article, field)
    assert status["pending"] == 0 and status["oldest_pending_seconds"] is None
    assert not Article.objects.filter(**{f"{since}__isnull": False}).exists()


# -- the admin's status page: counts and retries limited to what the user may see and change ----

STATUS = "admin:semantic_status"


def staff(username, *perms):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def fail(obj, field_name="embedding", label=None, pk=None):
    """A failure row naming what the worker would never write: a model, field or key that is not there."""
    return EmbeddingFailure.objects.create(
        model_label=label or obj._meta.label,
        field_name=field_name,
        object_pk=str(pk if pk is not None else obj.pk),
        error="Gemini API error 400: rejected",
        attempts=1,
        permanent=True,
    )


@pytest.fixture
def rows(fake_gemini):
    """An Article the test users see, one ArticleAdmin hides, and a Question: each failed, for real."""
    cache.clear()
    fake_gemini.reject_marker = "REJECTED"
    shown = Article.objects.create(title="shown article REJECTED", body="")
    hidden = Article.objects.create(title="hidden article REJECTED", body="", category="hidden")
    question = Question.objects.create(title="a question nobody here may see REJECTED", body="")
    assert EmbeddingFailure.objects.filter(permanent=True).count() == 3
    fake_gemini.reset()
    return shown, hidden, question


def test_status_page_counts_only_models_and_rows_the_user_may_view(client, rows):
    shown, hidden, question = rows
    client.force_login(staff("viewer", "view_article", "view_embeddingfailure"))
    response = client.get(reverse(STATUS))
    assert response.status_code == 200
    report = {row["model"]: row for row in response.context["report"]}
    assert "questions.Question" not in report  # no permission on its ModelAdmin
    assert "testapp.Document" not in report
    article = report["testapp.Article"]
    assert (article["total"], article["failed"]) == (1, 1)  # ArticleAdmin.get_queryset() hides the other
    assert [str(f) for f in response.context["errors"]] == [f"testapp.Article.embedding #{shown.pk}"]
    page = response.content.decode()
    assert "questions.Question" not in page and f"#{hidden.pk}<" not in page

    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    report = {(row["model"], row["field"]): row for row in client.get(reverse(STATUS)).context["report"]}
    assert report["testapp.Article", "embedding"]["total"] == 1  # get_queryset() applies to everyone
    assert report["questions.Question", "embedding"]["failed"] == 1
    assert report["questions.Question", "answer_embedding"]["failed"] == 0  # no answer: nothing to embed


def test_status_retry_requeues_only_rows_the_user_may_change_and_see(client, rows, fake_gemini):
    shown, hidden, question = rows
    client.force_login(staff("editor", "view_article", "change_article", "change_embeddingfailure"))
    response = client.post(reverse(STATUS), follow=True)
    page = response.content.decode()
    assert "Queued 1 failed row again." in page
    # Neither the Article ArticleAdmin hides nor the Question (no permission) is counted: a count
    # of records of rows the user cannot see would tell, press after press, which of them fail.
    assert "Skipped" not in page
    assert fake_gemini.texts() == ["shown article REJECTED"]
    assert set(EmbeddingFailure.objects.values_list("object_pk", "permanent")) == {
        (str(hidden.pk), True),
        (str(question.pk), True),
    }


def test_status_retry_needs_change_permission_on_the_model(client, rows, fake_gemini):
    client.force_login(staff("looker", "view_article", "change_embeddingfailure"))
    response = client.post(reverse(STATUS), follow=True)
    assert "Queued 0 failed rows again." in response.content.decode()
    assert fake_gemini.request_count == 0
    assert EmbeddingFailure.objects.filter(permanent=True).count() == 3


def test_status_page_and_retry_survive_failures_of_deleted_models_and_malformed_keys(admin_client, rows, fake_gemini):
    shown, hidden, question = rows
    fail(shown, label="gone.Model")
    fail(shown, field_name="removed_field")
    fail(shown, pk="not-a-number")
    fail(shown, pk="99999999999999999999999")
    assert admin_client.get(reverse(STATUS)).status_code == 200
    response = admin_client.post(reverse(STATUS), follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Queued 2 failed rows again." in page
    assert "Removed 1 failure record of a row deleted since." in page  # no row can have the out-of-range key
    assert "Skipped 3 failed rows" in page  # the first three above; not the Article ArticleAdmin hides
    assert sorted(fake_gemini.texts()) == [question.title, shown.title]
    assert EmbeddingFailure.objects.count() == 4 and EmbeddingFailure.objects.filter(object_pk=str(hidden.pk)).exists()


def test_a_configuration_problem_is_shown_by_the_status_command_embed_and_the_admin(admin_client, fake_gemini):
    from semantic.management.commands.semantic_status import Command as Status
    from tests.commands import call_failing
    from tests.fake_gemini import BAD_KEY

    with suspend_embedding():
        Article.objects.create(title="waits for a key", body="")
    fake_gemini.fail_every(400, body=BAD_KEY)
    stderr = io.StringIO()
    with pytest.raises(CommandError, match="Not finished"):  # exit status 1, for scripts and cron jobs
        call_command("semantic_embed", "testapp.Article", stdout=io.StringIO(), stderr=stderr)
    err = stderr.getvalue()
    assert "stopped before the end" in err and "SEMANTIC['API_KEY']" in err
    _, err, error = call_failing("semantic_status", "testapp.Article")  # exit status 1, for monitors
    assert "embedding is stopped" in err and "SEMANTIC['API_KEY']" in err
    assert error == Status.STOPPED.format(labels="testapp.Article.embedding")
    assert settings.TEST_API_KEY not in err
    page = admin_client.get(reverse("admin:semantic_status")).content.decode()
    assert "embedding is stopped" in page and settings.TEST_API_KEY not in page
