"""``semantic_remove_stale``: what the app stored for models and fields that are gone.

Rows are written straight into the app's tables, as an earlier version or an app taken
out of INSTALLED_APPS would have left them; the command lists them, asks, and deletes
only those (real PostgreSQL).
"""

import pytest
from django.core.management.base import CommandError
from django.utils import timezone

from semantic.management.commands.semantic_remove_stale import Command as RemoveStale
from semantic.models import Classifier, DismissedPair, EmbeddingBatchJob, EmbeddingFailure, FieldSwitch, Passage
from tests.commands import call

pytestmark = pytest.mark.django_db


def passage(label: str, field: str, pk: str = "1") -> Passage:
    return Passage.objects.create(
        model_label=label, field_name=field, object_pk=pk, position=0, start=0, end=4,
        text="text", text_hash="h", cut_from="c", spec="s", vector=[1.0, 0.0],
    )  # fmt: skip


def classifier(label_field: str) -> Classifier:
    return Classifier.objects.create(
        model_label="testapp.Article", field_name="embedding", label_field=label_field, spec="s",
        classes=[], weights=b"", intercepts=b"", rows=0,
    )  # fmt: skip


@pytest.fixture
def stored():
    """label -> (rows that must stay, rows that are stale)"""
    keep = [
        passage("testapp.LongRead", "embedding"),  # a field with passages
        DismissedPair.objects.create(
            model_label="testapp.ArticleProxy", field_name="embedding", first_pk="1", second_pk="2"
        ),
        classifier("category"),
        # queries for a replaced field, served by one that exists: the switch and what is stored under its name
        FieldSwitch.objects.create(model_label="testapp.Review", field_name="embedding_old", serving_field="embedding"),
        DismissedPair.objects.create(
            model_label="testapp.Review", field_name="embedding_old", first_pk="1", second_pk="2"
        ),
        EmbeddingFailure.objects.create(
            model_label="testapp.Article", field_name="embedding", object_pk="1", error="e"
        ),
    ]
    stale = [
        passage("gone.Model", "embedding"),  # an app taken out of INSTALLED_APPS
        passage("testapp.Article", "embedding"),  # Article's field keeps no passages
        passage("testapp.LongRead", "old_embedding"),  # a field removed
        passage("testapp.Review", "embedding_old"),  # passages of a replaced field: nothing reads them
        EmbeddingFailure.objects.create(model_label="testapp.Article", field_name="gone", object_pk="1", error="e"),
        DismissedPair.objects.create(model_label="gone.Model", field_name="embedding", first_pk="1", second_pk="2"),
        classifier("no_such_label"),
        FieldSwitch.objects.create(model_label="testapp.Article", field_name="old", serving_field="gone"),
        EmbeddingBatchJob.objects.create(
            name="jobs/1",
            model_label="testapp.Article",
            field_name="gone",
            spec="s",
            rows=0,
            first_pk="1",
            last_pk="1",
            items=[],
            finished_at=timezone.now(),
        ),  # fmt: skip
    ]
    return keep, stale


def remaining(rows):
    return [row for row in rows if type(row)._base_manager.filter(pk=row.pk).exists()]


def test_it_lists_the_stale_rows_and_deletes_nothing_unless_told_yes(stored, monkeypatch):
    keep, stale = stored
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    out, _ = call("semantic_remove_stale")
    assert "semantic.Passage: 1 for gone.Model.embedding (no such model installed)" in out
    assert "semantic.Passage: 1 for testapp.Article.embedding (the field keeps no passages)" in out
    assert "semantic.FieldSwitch: 1 for testapp.Article.old (its serving field 'gone' is gone)" in out
    assert "semantic.Classifier: 1 for testapp.Article.embedding (its label field 'no_such_label' is gone)" in out
    assert len(out.strip().splitlines()) == len(stale) + 1 and out.strip().endswith("Nothing deleted.")
    assert remaining(keep + stale) == keep + stale


def test_without_an_answer_or_with_an_unknown_database_it_says_so_in_one_line(stored, monkeypatch):
    keep, stale = stored

    def closed(prompt):
        raise EOFError

    monkeypatch.setattr("builtins.input", closed)
    with pytest.raises(CommandError) as info:
        call("semantic_remove_stale")
    assert str(info.value) == RemoveStale.NO_ANSWER
    assert remaining(keep + stale) == keep + stale
    with pytest.raises(CommandError, match="invalid choice: 'reporting'"):
        call("semantic_remove_stale", "--noinput", "--database", "reporting")


def test_it_deletes_only_the_stale_rows(stored):
    keep, stale = stored
    out, _ = call("semantic_remove_stale", "--noinput")
    assert out.strip().endswith(f"Deleted {len(stale)} rows.")
    assert remaining(stale) == []
    assert remaining(keep) == keep
    assert call("semantic_remove_stale", "--noinput")[0].strip() == "Nothing stale."
