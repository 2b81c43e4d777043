"""A wake-up task's bounded share (review 3, djangoq F7): after ``HAND_OVER_BATCHES`` requests'
worth of rows it queues the rest as a new task behind the project's own tasks queued meanwhile,
so one worker (README's ``"workers": 1``) is not held until the whole backlog is embedded.

Real PostgreSQL, django-q2's ORM broker (its queue, ``OrmQ``, read in the order it hands tasks
out) and the fake Gemini server.
"""

import pytest
from django_q.signing import SignedPackage

from semantic import suspend_embedding
from semantic.fields import get_embedding_field
from semantic.tasks import HAND_OVER_BATCHES, embed_field
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = 2
SHARE = HAND_OVER_BATCHES * BATCH
ROWS = 2 * SHARE + 3


def queued() -> list[tuple[str, tuple]]:
    """The tasks waiting in django-q2's ORM queue, first out first: (function, arguments)."""
    from django_q.models import OrmQ

    tasks = [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]
    return [(task["func"], tuple(task["args"])) for task in tasks]


def run(task: tuple[str, tuple]) -> dict:
    """What a worker does with a queued task: take it out of the queue and run it."""
    from django_q.models import OrmQ

    func, args = task
    OrmQ.objects.order_by("id").first().delete()
    if func == "math.floor":
        return {}
    assert func == "semantic.tasks.embed_field"
    return embed_field(*args)


def test_a_wakeup_embeds_its_share_and_queues_the_rest_behind_the_projects_task(fake_gemini, semantic_settings):
    semantic_settings(SYNC=False, BATCH_SIZE=BATCH)
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"Backlog {i}", body="imported") for i in range(ROWS))
    pending = get_embedding_field(Article).pending()

    def project_queues_its_own_task(request):
        # After the run's first request (which woke another worker for the rest): a web request
        # of the project queues its own task, as async_task() does.
        if fake_gemini.request_count == 2:
            from django_q.tasks import async_task

            async_task("math.floor", 1.5, task_name="the project's own task")

    fake_gemini.on_request = project_queues_its_own_task

    summary = embed_field("testapp.Article", "embedding")

    assert summary["embedded"] == SHARE and summary["handed_over"] is True
    assert fake_gemini.request_count == HAND_OVER_BATCHES
    assert Article.objects.filter(pending).count() == ROWS - SHARE
    wakeup = ("semantic.tasks.embed_field", ("testapp.Article", "embedding"))
    # The project's task runs next; the rest of the backlog after it.
    assert queued() == [("math.floor", (1.5,)), wakeup]

    assert run(queued()[0]) == {}
    fake_gemini.on_request = None
    second = run(queued()[0])
    assert second["embedded"] == SHARE and queued() == [wakeup]
    last = run(queued()[0])
    assert last["embedded"] == ROWS - 2 * SHARE and "handed_over" not in last
    # Its first request may have woken another worker for the last row (unless this process sent a
    # wake-up less than WAKE_WINDOW ago): that one finds nothing left.
    assert queued() in ([], [wakeup])
    if queued():
        assert run(queued()[0])["embedded"] == 0 and queued() == []
    assert not Article.objects.filter(pending).exists()
    assert fake_gemini.request_count == HAND_OVER_BATCHES * 2 + 2
