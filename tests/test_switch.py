"""Changing model and size through a field that ``replaces`` another (semantic.switch)."""

import io
import json
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.test.utils import isolate_apps

from semantic import suspend_embedding
from semantic.management.commands.semantic_embed import Command as Embed
from semantic.management.targets import MIGRATION_NEEDED
from semantic.switch import INCOMPLETE, NOT_REPLACING, UNKNOWN_REPLACED, serving_field, switch_to, switched_name
from tests.commands import call
from tests.testapp.models import Review

pytestmark = pytest.mark.django_db(transaction=True)

TEXTS = [
    f"Review {i}: the {word} was good" for i, word in enumerate("soup fish bread cake wine tea coffee salad".split())
]


@pytest.fixture
def reviews(fake_gemini, semantic_settings):
    """Rows embedded in the old field only, as before the new field was added."""
    semantic_settings(CACHE=None)  # every query asks the server, so the tests see which model answers
    with suspend_embedding():
        Review.objects.bulk_create(Review(text=text) for text in TEXTS)
    call("semantic_embed", "testapp.Review.embedding")
    fake_gemini.reset()
    return Review.objects.all()


def serving():
    """Which fields semantic_status --json says serve queries."""
    report = json.loads(call("semantic_status", "testapp.Review", "--json")[0])
    return {row["field"]: row["serving"] for row in report}


def last_query(fake_gemini):
    request = fake_gemini.requests[-1]
    (item,) = request["body"]["requests"]
    return request["model"], item["outputDimensionality"]


def test_the_new_field_stands_by_until_switched(reviews, fake_gemini):
    assert serving_field(Review).name == "embedding"
    assert len(Review.objects.similar_to("good fish")) == len(TEXTS)
    assert last_query(fake_gemini) == ("gemini-embedding-001", 128)

    call("semantic_embed", "testapp.Review.embedding_next", "--limit", "3")
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Review.embedding_next", "--switch", "--limit", "2")
    left = len(TEXTS) - 5
    assert str(info.value) == INCOMPLETE.format(label="testapp.Review", field="embedding_next", rows=left)
    # Half filled, the new field is not used: every row is still found, by the old model.
    assert len(Review.objects.similar_to("good fish")) == len(TEXTS)
    assert last_query(fake_gemini) == ("gemini-embedding-001", 128)

    assert serving() == {"embedding": True, "embedding_next": False}
    out, _ = call("semantic_embed", "testapp.Review.embedding_next", "--switch")
    assert serving() == {"embedding": False, "embedding_next": True}
    spec = serving_field(Review).spec()
    assert Embed.SWITCHED.format(model="testapp.Review", original="embedding", field="embedding_next", spec=spec) in out
    assert spec == "gemini:gemini-embedding-next|SEMANTIC_SIMILARITY|256"
    results = list(Review.objects.similar_to("good fish"))
    assert len(results) == len(TEXTS) and results[0].text == TEXTS[1]
    assert last_query(fake_gemini) == ("gemini-embedding-next", 256)
    # Code that names the old field is served by its replacement.
    assert len(Review.objects.similar_to("good fish", field="embedding")) == len(TEXTS)
    assert last_query(fake_gemini) == ("gemini-embedding-next", 256)

    # Saves keep both fields current, so switching back is immediate.
    Review.objects.create(text="Review 8: the pie was good")
    out, _ = call("semantic_embed", "testapp.Review.embedding", "--switch")
    assert "Queries for testapp.Review.embedding now use embedding " in out
    assert len(Review.objects.similar_to("good pie")) == len(TEXTS) + 1
    assert last_query(fake_gemini) == ("gemini-embedding-001", 128)


def test_queries_during_the_switch_never_mix_models_or_come_up_empty(reviews, fake_gemini, semantic_settings):
    """Each of the command's requests is answered only once a search has finished after it arrived:
    searches run during every batch however the search thread is scheduled (TIMEOUT, raised here,
    only guards against a hang)."""
    semantic_settings(TIMEOUT=60)
    seen, errors = [], []
    done = threading.Event()
    searched = threading.Condition()

    def search():
        try:
            while not done.is_set():
                rows = list(Review.objects.similar_to("good fish"))
                with searched:
                    seen.append((len(rows), rows[0].text if rows else None))
                    searched.notify_all()
        except Exception as exc:  # a query mixing 128- and 256-dimensional vectors fails in PostgreSQL
            errors.append(exc)
        finally:
            with searched:
                done.set()  # a failed search thread holds no request
                searched.notify_all()
            connections.close_all()

    def the_commands(request):
        return "good fish" not in json.dumps(request["body"])  # not a search's

    held = []  # per command request: whether a search finished while it was held

    def answer_after_a_search(record):
        if the_commands(record):
            with searched:
                searches = len(seen)
                held.append(searched.wait_for(lambda: len(seen) > searches or done.is_set(), timeout=30))

    fake_gemini.on_request = answer_after_a_search

    thread = threading.Thread(target=search)
    thread.start()
    try:
        call("semantic_embed", "testapp.Review.embedding_next", "--batch-size", "2", "--switch")
    finally:
        done.set()
        thread.join()
    assert not errors
    assert held == [True] * 4  # the command's four batches, a search finished during each
    assert set(seen) == {(len(TEXTS), TEXTS[1])}
    models = {request["model"] for request in fake_gemini.requests}
    assert models == {"gemini-embedding-001", "gemini-embedding-next"}
    assert serving_field(Review).name == "embedding_next"


def test_switch_needs_a_field_that_replaces_another(reviews):
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Article.embedding", "--switch")
    assert str(info.value) == NOT_REPLACING.format(label="testapp.Article", field="embedding")
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Review", "--switch")
    assert str(info.value) == Embed.SWITCH_ONE
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Review.embedding_next", "--switch", "--queue")
    assert "does not go with --queue or --dry-run" in str(info.value)


def test_a_storage_change_not_migrated_asks_for_a_migration(reviews):
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE testapp_review ALTER COLUMN embedding TYPE halfvec USING NULL")
    err = io.StringIO()
    try:
        with pytest.raises(CommandError) as info:
            call_command("semantic_embed", "testapp.Review.embedding", stdout=io.StringIO(), stderr=err)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE testapp_review ALTER COLUMN embedding TYPE vector USING NULL")
    sql = 'ALTER TABLE "testapp_review" ALTER COLUMN "embedding" TYPE vector USING "embedding"::vector'
    assert (
        MIGRATION_NEEDED.format(
            label="testapp.Review.embedding",
            actual="halfvec",
            declared="vector",
            field="embedding",
            app="testapp",
            sql=sql,
        )
        in err.getvalue()
    )
    assert str(info.value) == Embed.INCOMPLETE.format(labels="testapp.Review.embedding")


def test_a_changed_model_setting_warns_that_search_shrinks(reviews, semantic_settings):
    semantic_settings(MODEL="another-model")
    out, err = call("semantic_embed", "testapp.Review.embedding", "--dry-run")
    spec = "gemini:another-model|SEMANTIC_SIMILARITY|128"
    assert Embed.STALE.format(label="testapp.Review.embedding", rows=len(TEXTS), changed="model", spec=spec) in err


def test_the_warning_names_the_settings_the_stale_vectors_were_made_with(reviews):
    """A task type changed (the local model's own vector for every task type, say) is not "another model or size"."""
    spec = "gemini:gemini-embedding-001|SEMANTIC_SIMILARITY|128"
    Review.objects.update(embedding_spec=spec.replace("SEMANTIC_SIMILARITY", "RETRIEVAL_DOCUMENT"))
    _, err = call("semantic_embed", "testapp.Review.embedding", "--dry-run")
    label, rows = "testapp.Review.embedding", len(TEXTS)
    assert Embed.STALE.format(label=label, rows=rows, changed="task type", spec=spec) in err
    assert "vectors made with another task type than now" in err and "model or size" not in err
    Review.objects.filter(pk=reviews[0].pk).update(embedding_spec="local:all-MiniLM-L6-v2|RETRIEVAL_DOCUMENT|128")
    _, err = call("semantic_embed", "testapp.Review.embedding", "--dry-run")
    assert Embed.STALE.format(label=label, rows=rows, changed="model or task type", spec=spec) in err


@isolate_apps("tests.testapp")
def test_the_replacement_answers_for_a_deleted_field():
    from django.db import models

    from semantic import EmbeddingField

    class Migrated(models.Model):
        text = models.TextField()
        embedding_v2 = EmbeddingField(source="text", dimensions=256, replaces="embedding")

        class Meta:
            app_label = "testapp"

    field = Migrated._meta.get_field("embedding_v2")
    assert serving_field(Migrated) is field
    assert serving_field(Migrated, "embedding") is field
    assert serving_field(Migrated, "embedding_v2") is field
    with pytest.raises(ValueError, match="has no EmbeddingField named 'other'"):
        serving_field(Migrated, "other")


@isolate_apps("tests.testapp")
def test_a_switch_to_a_misspelt_replaces_is_refused():
    """replaces="embeding" names no field the model has or its migrations had: a switch
    would redirect nothing (and leave the model's searches asking which field to use)."""
    from django.db import models

    from semantic import EmbeddingField
    from semantic.models import FieldSwitch

    class Review(models.Model):
        text = models.TextField()
        embedding = EmbeddingField(source="text", dimensions=128)
        embedding_v2 = EmbeddingField(source="text", dimensions=128, replaces="embeding")

        class Meta:
            app_label = "testapp"

    with pytest.raises(ValueError) as refused:
        switch_to(Review, Review._meta.get_field("embedding_v2"))
    assert str(refused.value) == UNKNOWN_REPLACED.format(
        label="testapp.Review", field="embedding_v2", replaced="embeding", names="embedding, embedding_v2"
    )
    assert not FieldSwitch.objects.exists()
    FieldSwitch.objects.create(model_label="testapp.Review", field_name="embeding", serving_field="embedding_v2")
    assert switched_name(Review, Review._meta.get_field("embedding_v2")) == "embeding"  # a switch remembers it


def test_a_row_the_api_rejects_for_good_does_not_hold_the_switch_up(reviews, fake_gemini):
    rejected = Review.objects.order_by("pk")[3]
    with suspend_embedding():
        rejected.text += " REJECTME"
        rejected.save()
    fake_gemini.reject_marker = "REJECTME"

    out, err = call("semantic_embed", "testapp.Review.embedding_next", "--switch")  # exit status 0: it switched

    spec = Review._meta.get_field("embedding_next").spec()
    assert Embed.SWITCHED.format(model="testapp.Review", original="embedding", field="embedding_next", spec=spec) in out
    left_out = Embed.SWITCHED_WITHOUT.format(label="testapp.Review.embedding_next", rows=1, pks=rejected.pk)
    assert left_out in err
    assert serving_field(Review).name == "embedding_next"
    assert len(Review.objects.similar_to("good fish")) == len(TEXTS) - 1


def test_a_row_failed_for_now_still_holds_the_switch_up(reviews, fake_gemini, semantic_settings):
    semantic_settings(MAX_ATTEMPTS=1)
    fake_gemini.fail_every(503, body='{"error": {"code": 503, "message": "busy"}}')
    with pytest.raises(CommandError):  # the API kept failing: the run stopped
        call("semantic_embed", "testapp.Review.embedding_next")
    fake_gemini.reset()
    with pytest.raises(CommandError) as info:
        call("semantic_embed", "testapp.Review.embedding_next", "--switch")
    assert str(info.value) == INCOMPLETE.format(label="testapp.Review", field="embedding_next", rows=len(TEXTS))
    assert serving_field(Review).name == "embedding"


@isolate_apps("tests.testapp")
def test_a_second_model_change_is_served_once_switched():
    """embedding -> embedding_v2 (switched, then embedding deleted) -> embedding_v3."""
    from django.db import models

    from semantic import EmbeddingField

    class Review(models.Model):
        """testapp's Review, whose migrations had embedding, after two changes (in a table of its own)."""

        text = models.TextField()
        embedding_v2 = EmbeddingField(source="text", dimensions=256, replaces="embedding")
        embedding_v3 = EmbeddingField(source="text", dimensions=512, replaces="embedding_v2")

        class Meta:
            app_label = "testapp"
            db_table = "testapp_changed"

    v2, v3 = Review._meta.get_field("embedding_v2"), Review._meta.get_field("embedding_v3")
    with connection.schema_editor() as editor:
        editor.create_model(Review)
    try:
        assert switch_to(Review, v2).original == "embedding"  # the first change, before embedding went
        assert [serving_field(Review, name) for name in (None, "embedding", "embedding_v2")] == [v2, v2, v2]

        switched = switch_to(Review, v3)
        assert (switched.original, switched.field, switched.rejected) == ("embedding", "embedding_v3", [])
        for name in (None, "embedding", "embedding_v2", "embedding_v3"):
            assert serving_field(Review, name) is v3, name

        switch_to(Review, v2)  # and back, while both exist
        for name in (None, "embedding", "embedding_v2"):
            assert serving_field(Review, name) is v2, name
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Review)


def test_pairs_marked_not_duplicates_follow_the_switch(reviews):
    from semantic.models import DismissedPair

    first, second = (str(pk) for pk in Review.objects.order_by("pk").values_list("pk", flat=True)[:2])
    DismissedPair.objects.create(
        model_label="testapp.Review", field_name="embedding", first_pk=first, second_pk=second, dismissed_by="ann"
    )
    call("semantic_embed", "testapp.Review.embedding_next", "--switch")
    assert serving_field(Review).name == "embedding_next"
    pairs = DismissedPair.objects.filter(model_label="testapp.Review").order_by("field_name")
    assert [(p.field_name, p.first_pk, p.second_pk, p.dismissed_by) for p in pairs] == [
        ("embedding", first, second, "ann"),
        ("embedding_next", first, second, "ann"),
    ]
    call("semantic_embed", "testapp.Review.embedding", "--switch")  # and back: nothing doubled
    assert DismissedPair.objects.count() == 2
