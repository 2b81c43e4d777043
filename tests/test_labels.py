"""A label field with nothing to learn from: no labelled row with a current vector, and no choices.

Article's ``category`` is a plain ``CharField`` (no choices), as many projects' labels are.
Zero-shot needs choices, the vote needs labelled rows with vectors of the current model:
with neither, every way of suggesting says what to do instead of failing inside Django.
"""

import pytest
from django.core.management import CommandError
from django.urls import reverse

from semantic import embed_pending, suspend_embedding
from semantic.admin_labels import LABELS_UNAVAILABLE
from semantic.classify import predict_labels, suggest_label
from semantic.labels import NO_EXAMPLES
from semantic.management.commands.semantic_classify import Command
from tests.commands import call
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db

NOTHING_TO_LEARN = NO_EXAMPLES.format(label="testapp.Article", field="category")


def articles(labelled: int, unlabelled: int) -> None:
    Article.objects.bulk_create(
        [Article(title=f"Labelled article {n}", body="", category="news") for n in range(labelled)]
        + [Article(title=f"Unlabelled article {n}", body="") for n in range(unlabelled)]
    )


def test_a_new_table_with_nothing_labelled_says_to_label_some_rows():
    articles(labelled=0, unlabelled=3)
    embed_pending(Article)
    assert Article.objects.filter(embedding__isnull=False).count() == 3
    with pytest.raises(ValueError) as info:
        list(predict_labels(Article.objects.all(), "category"))
    assert str(info.value) == NOTHING_TO_LEARN
    with pytest.raises(ValueError) as info:
        suggest_label(Article.objects.all(), "an article about the news", "category")
    assert str(info.value) == NOTHING_TO_LEARN
    with pytest.raises(CommandError) as command:
        call("semantic_classify", "testapp.Article", "--label", "category")
    assert str(command.value) == NOTHING_TO_LEARN
    assert set(Article.objects.values_list("category", flat=True)) == {""}


def test_labelled_rows_not_embedded_yet_are_nothing_to_learn_from():
    with suspend_embedding():
        articles(labelled=3, unlabelled=3)
    assert not Article.objects.filter(embedding__isnull=False).exists()
    with pytest.raises(ValueError) as info:
        list(predict_labels(Article.objects.all(), "category"))
    assert str(info.value) == NOTHING_TO_LEARN


def test_labelled_rows_whose_vectors_another_model_made_are_nothing_to_learn_from(semantic_settings):
    """As after a deployment switches model (or adds the Gemini key): every stored vector is stale
    until the worker embeds it again."""
    articles(labelled=3, unlabelled=3)
    embed_pending(Article)
    assert Article.objects.filter(embedding__isnull=False).count() == 6
    semantic_settings(MODEL="gemini-embedding-002")
    with pytest.raises(ValueError) as info:
        list(predict_labels(Article.objects.all(), "category"))
    assert str(info.value) == NOTHING_TO_LEARN
    # The command counts the rows to label first: none has a current vector either.
    out, _ = call("semantic_classify", "testapp.Article", "--label", "category")
    assert out.strip() == Command.NOTHING.format(label="testapp.Article")
    assert sorted(Article.objects.values_list("category", flat=True)) == ["", "", "", "news", "news", "news"]


def test_the_admin_action_says_there_is_nothing_to_learn_from(admin_client):
    """The preview and, posted anyway, the confirmation: a message on the changelist, no error page."""
    articles(labelled=0, unlabelled=3)
    embed_pending(Article)
    changelist = reverse("myadmin:testapp_article_changelist")
    selected = {
        "action": "apply_suggested_labels",
        "index": 0,
        "_selected_action": list(Article.objects.values_list("pk", flat=True)),
    }
    for confirmation in ({}, {"post": "yes", "min_confidence": "0.5"}):
        response = admin_client.post(changelist, {**selected, **confirmation}, follow=True)
        assert response.status_code == 200
        assert response.redirect_chain == [(changelist, 302)]
        assert [str(m) for m in response.context["messages"]] == [LABELS_UNAVAILABLE.format(reason=NOTHING_TO_LEARN)]
    assert set(Article.objects.values_list("category", flat=True)) == {""}
