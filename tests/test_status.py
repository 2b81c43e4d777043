import pytest

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
