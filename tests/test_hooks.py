"""The save hook in other people's models: inheritance, update_fields, mixed sources,
a second database, and text from Python changed behind save()'s back."""

import io
import json

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import connection, migrations
from django.db.migrations.loader import MigrationLoader

from semantic import embed_pending, suspend_embedding
from semantic.registry import get_embedding_field
from tests.testapp.models import Article, ArticleProxy, Card, FeaturedArticle, Snippet, Tag

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])


def has_vector(model, pk, using="default"):
    return model._base_manager.using(using).filter(pk=pk, embedding__isnull=False).exists()


def test_saves_through_a_proxy_are_embedded(fake_gemini):
    row = ArticleProxy.objects.create(title="Through a proxy", body="")
    assert fake_gemini.texts() == ["Through a proxy"]
    assert has_vector(Article, row.pk)


def test_saves_of_a_multi_table_child_are_embedded_once(fake_gemini):
    row = FeaturedArticle.objects.create(title="A featured article", body="", blurb="new")
    assert fake_gemini.texts() == ["A featured article"]
    assert has_vector(Article, row.pk)
    fake_gemini.reset()
    FeaturedArticle.objects.filter(pk=row.pk).update(blurb="changed")  # not the text
    summary = embed_pending()
    # The sweep visits the field once, on the table that holds it; not again for the child.
    assert "testapp.Article.embedding" in summary and "testapp.FeaturedArticle.embedding" not in summary
    assert fake_gemini.request_count == 0


def test_a_field_from_an_abstract_base_is_hooked_on_the_subclass(fake_gemini):
    tag = Tag.objects.create(label="billing")
    assert fake_gemini.texts() == ["billing"]
    assert has_vector(Tag, tag.pk)


def test_update_fields_that_miss_the_text_queue_nothing(fake_gemini, semantic_settings):
    from django_q.models import OrmQ

    from semantic.dispatch import forget_wakeups

    semantic_settings(SYNC=False)
    article = Article.objects.create(title="Counted", body="")
    OrmQ.objects.all().delete()
    forget_wakeups()  # the queue was purged behind the dispatcher's back
    article.title = "Counted again"
    article.category = "news"
    article.save(update_fields=["category"])  # the new title is not saved: nothing to embed
    assert OrmQ.objects.count() == 0
    article.save(update_fields=["title"])
    assert OrmQ.objects.count() == 1


def test_text_from_a_field_and_a_method_together(fake_gemini):
    assert not [e for e in checks.run_checks() if getattr(e, "obj", None) is get_embedding_field(Card)]
    card = Card.objects.create(title="Refunds", body="within thirty days")
    assert fake_gemini.texts() == ["Refunds\n\nWITHIN THIRTY DAYS"]
    fake_gemini.reset()
    card.views += 1
    card.save()  # the text did not change
    assert fake_gemini.request_count == 0


def test_rows_saved_to_a_second_database_are_embedded_there(fake_gemini):
    row = Article.objects.using("other").create(title="Stored elsewhere", body="")
    assert fake_gemini.texts() == ["Stored elsewhere"]
    assert has_vector(Article, row.pk, using="other")
    assert not Article.objects.using("default").filter(pk=row.pk).exists()


def test_python_text_changed_by_update_is_embedded_once_then_left_alone(fake_gemini):
    """Documented: QuerySet.update() of a method's inputs is not seen until the next save().

    A row updated before its first vector was written gets the vector of its final
    text, and is not sent again on later sweeps.
    """
    with suspend_embedding():
        card = Card.objects.create(title="Shipping", body="two days")
    Card.objects.filter(pk=card.pk).update(body="three days")  # behind save()'s back
    embed_pending()
    assert fake_gemini.texts() == ["Shipping\n\nTHREE DAYS"]
    assert not Card.objects.filter(get_embedding_field(Card).pending()).exists()  # settled, not pending forever
    fake_gemini.reset()
    assert embed_pending()["testapp.Card.embedding"]["requests"] == 0
    assert embed_pending()["testapp.Card.embedding"]["requests"] == 0

    Card.objects.filter(pk=card.pk).update(body="four days")  # not seen: no hash in SQL for a method
    assert embed_pending()["testapp.Card.embedding"]["requests"] == 0
    Card.objects.get(pk=card.pk).save()  # the next save() sees it
    assert fake_gemini.texts() == ["Shipping\n\nFOUR DAYS"]


def test_saving_only_the_text_starts_the_wait(fake_gemini, semantic_settings):
    """save(update_fields=[<text>]) writes only those columns; the hook starts the wait."""
    semantic_settings(SYNC=False)  # rows wait for a worker that is not running
    article = Article.objects.create(title="Waiting", body="")
    assert Article.objects.get(pk=article.pk).embedding_pending_since is not None
    Article.objects.filter(pk=article.pk).update(embedding_pending_since=None)  # as if embedded long ago
    article.body = "edited through update_fields"
    article.save(update_fields=["body"])
    started = Article.objects.get(pk=article.pk).embedding_pending_since
    assert started is not None

    article.body = "edited again while waiting"
    article.save(update_fields=["body"])
    assert Article.objects.get(pk=article.pk).embedding_pending_since == started  # still waiting since then

    article.category = "news"
    article.save(update_fields=["category"])  # not the text
    Article.objects.filter(pk=article.pk).update(embedding_pending_since=None)
    article.save(update_fields=["category"])
    assert Article.objects.get(pk=article.pk).embedding_pending_since is None


def test_saving_only_the_text_while_suspended_leaves_the_row_pending(fake_gemini):
    """suspend_embedding() queues nothing, but the row must still look pending, since when."""
    embedded = Article.objects.create(title="Embedded", body="")
    card = Card.objects.create(title="Refunds", body="within thirty days")
    with suspend_embedding():
        embedded.body = "edited"
        embedded.save(update_fields=["body"])
        card.body = "within sixty days"
        card.save(update_fields=["body"])  # text from a method: its hash column is not in update_fields
    assert Article.objects.get(pk=embedded.pk).embedding_pending_since is not None
    assert Card.objects.filter(get_embedding_field(Card).pending(), pk=card.pk).exists()
    assert Card.objects.get(pk=card.pk).embedding_pending_since is not None
    fake_gemini.reset()
    embed_pending(Card)
    assert fake_gemini.texts() == ["Refunds\n\nWITHIN SIXTY DAYS"]


def test_loaddata_of_an_edited_dump_re_embeds_only_the_rows_whose_python_text_changed(fake_gemini, tmp_path):
    """A fixture carries the hash of the text its rows held when dumped; a raw save writes it as is."""
    edited = Card.objects.create(title="Refunds", body="within thirty days")
    kept = Card.objects.create(title="Shipping", body="two days")
    dump = io.StringIO()
    call_command("dumpdata", "testapp.Card", stdout=dump)
    rows = json.loads(dump.getvalue())
    next(row for row in rows if row["pk"] == edited.pk)["fields"]["body"] = "within sixty days"
    fixture = tmp_path / "cards.json"
    fixture.write_text(json.dumps(rows))
    fake_gemini.reset()

    call_command("loaddata", str(fixture), verbosity=0)
    assert fake_gemini.request_count == 0  # raw saves queue nothing
    field = get_embedding_field(Card)
    assert set(Card.objects.filter(field.pending()).values_list("pk", flat=True)) == {edited.pk, kept.pk}
    summary = embed_pending(Card)["testapp.Card.embedding"]
    assert fake_gemini.texts() == ["Refunds\n\nWITHIN SIXTY DAYS"]  # the unchanged row is only re-hashed
    assert summary["requests"] == 1
    assert not Card.objects.filter(field.pending()).exists()


def test_a_data_migration_that_edits_python_text_leaves_the_row_pending(fake_gemini):
    """A historical model (RunPython) has no methods: it cannot hash the text, and must not keep the old hash."""
    edited = Card.objects.create(title="Refunds", body="within thirty days")
    kept = Card.objects.create(title="Shipping", body="two days")
    fake_gemini.reset()

    def forwards(apps, schema_editor):
        historical = apps.get_model("testapp", "Card")
        card = historical.objects.get(pk=edited.pk)
        card.body = "within sixty days"
        card.save()
        historical.objects.get(pk=kept.pk).save()
        historical.objects.create(title="Returns", body="by post")

    state = MigrationLoader(connection).project_state()
    with connection.schema_editor() as editor:
        migrations.RunPython(forwards).database_forwards("testapp", editor, state, state)
    field = get_embedding_field(Card)
    assert Card.objects.filter(field.pending()).count() == 3
    summary = embed_pending(Card)["testapp.Card.embedding"]
    assert sorted(fake_gemini.texts()) == ["Refunds\n\nWITHIN SIXTY DAYS", "Returns\n\nBY POST"]
    assert summary["requests"] == 1
    assert not Card.objects.filter(field.pending()).exists()


def test_a_data_migration_saving_named_columns_of_python_text_leaves_the_row_pending(fake_gemini):
    """save(update_fields=...) writes only the named columns: the hash loaded with the row must not stay."""
    edited = Card.objects.create(title="Refunds", body="within thirty days")
    untouched = Card.objects.create(title="Shipping", body="two days")
    fake_gemini.reset()

    def forwards(apps, schema_editor):
        card = apps.get_model("testapp", "Card").objects.get(pk=edited.pk)
        card.body = "within sixty days"
        card.save(update_fields=["body"])

    state = MigrationLoader(connection).project_state()
    with connection.schema_editor() as editor:
        migrations.RunPython(forwards).database_forwards("testapp", editor, state, state)
    field = get_embedding_field(Card)
    assert list(Card.objects.filter(field.pending()).values_list("pk", flat=True)) == [edited.pk]
    assert Card.objects.get(pk=untouched.pk).embedding_source_hash is not None
    embed_pending(Card)
    assert fake_gemini.texts() == ["Refunds\n\nWITHIN SIXTY DAYS"]
    assert not Card.objects.filter(field.pending()).exists()


@pytest.mark.parametrize("rows", [5, 50])
def test_deleting_rows_of_a_field_without_passages_is_one_delete_whatever_their_number(rows):
    """No post_delete receiver on such a model, so Django deletes a queryset in one statement
    instead of loading every row (vector included) and signalling once per row. Their failure
    records are left to the sweep (and the admin's own deletes)."""
    from django.test.utils import CaptureQueriesContext

    with suspend_embedding():
        Snippet.objects.bulk_create([Snippet(escaped=f"Row {i}") for i in range(rows)])
    with CaptureQueriesContext(connection) as queries:
        deleted, _ = Snippet.objects.all().delete()
    assert deleted >= rows
    statements = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert not [q for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(statements) == 1 and "semantic_embeddingfailure" not in statements[0]


def test_a_saved_instance_holds_the_time_its_row_began_waiting(fake_gemini, semantic_settings):
    """An API answering a POST with the saved instance says the row waits, as a GET would.

    After an UPDATE the instance keeps what it was loaded with: the row's new value
    depends on the row as the UPDATE finds it, which only a query tells.
    """
    semantic_settings(SYNC=False)  # rows wait for a worker that is not running
    created = Article.objects.create(title="Waiting", body="")
    assert created.embedding_pending_since is not None
    assert created.embedding_pending_since == Article.objects.get(pk=created.pk).embedding_pending_since

    empty = Tag.objects.create(label="")  # no text: nothing to wait for
    assert empty.embedding_pending_since is None
    assert Tag.objects.get(pk=empty.pk).embedding_pending_since is None

    [bulk] = Article.objects.bulk_create([Article(title="Bulk", body="")])
    assert bulk.embedding_pending_since == Article.objects.get(pk=bulk.pk).embedding_pending_since is not None

    loaded = Article.objects.get(pk=created.pk)
    loaded.body = "edited"
    loaded.save()
    assert loaded.embedding_pending_since == created.embedding_pending_since  # a time, not an SQL expression
    loaded.refresh_from_db(fields=["embedding_pending_since"])
    assert loaded.embedding_pending_since == created.embedding_pending_since  # it was already waiting
