from datetime import timedelta

import pytest
from django.utils import timezone

from semantic import suspend_embedding
from semantic.embedder import Embedder
from semantic.fields import get_embedding_field
from semantic.models import EmbeddingFailure
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
