"""Text from a property that reads many-to-many rows (a tag list, as django-taggit's is
read) follows changes of those relations, made after the row's save as forms make them."""

import pytest
from django import forms
from django.db import transaction

from semantic import suspend_embedding
from semantic.registry import get_embedding_field
from tests.testapp.models import Post, Topic

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def topics():
    return {name: Topic.objects.create(name=name) for name in ("hiking", "mountains", "beach", "swimming")}


def state(post):
    """Whether the row is pending, and whether its vector was made from its current text."""
    field = get_embedding_field(Post)
    row = Post.objects.get(pk=post.pk)
    pending = Post.objects.filter(field.pending(), pk=post.pk).exists()
    return {"pending": pending, "current": getattr(row, field.embedded_hash_name) == field.text_hash(row)}


SETTLED = {"pending": False, "current": True}


class PostForm(forms.ModelForm):
    class Meta:
        model = Post
        fields = ["title", "topics"]


def test_a_form_that_saves_the_tags_after_the_row_embeds_the_new_tags(fake_gemini, topics):
    """As the admin's change form does: save_model(), then save_related() (form.save_m2m())."""
    post = Post.objects.create(title="A weekend away")
    post.topics.set([topics["hiking"], topics["mountains"]])
    assert state(post) == SETTLED
    fake_gemini.reset()
    form = PostForm({"title": "A weekend away", "topics": [topics["beach"].pk, topics["swimming"].pk]}, instance=post)
    with transaction.atomic():
        form.save()
    assert fake_gemini.texts() == ["A weekend away\n\nbeach, swimming"]
    assert state(post) == SETTLED


@pytest.mark.parametrize("side", ["row", "related rows"])
def test_adding_removing_and_clearing_tags_on_either_side_embeds_the_new_text(fake_gemini, topics, side):
    post = Post.objects.create(title="A weekend away")
    fake_gemini.reset()
    if side == "row":
        post.topics.add(topics["hiking"])
        post.topics.remove(topics["hiking"])
        post.topics.add(topics["beach"])
        post.topics.clear()
    else:
        topics["hiking"].posts.add(post)
        topics["hiking"].posts.remove(post)
        topics["beach"].posts.add(post)
        topics["beach"].posts.clear()
    texts = ["A weekend away\n\nhiking", "A weekend away", "A weekend away\n\nbeach", "A weekend away"]
    assert fake_gemini.texts() == texts
    assert state(post) == SETTLED


def test_tags_changed_while_embedding_is_suspended_leave_the_row_pending(fake_gemini, topics):
    post = Post.objects.create(title="A weekend away")
    fake_gemini.reset()
    with suspend_embedding():
        post.topics.add(topics["hiking"])
    assert fake_gemini.request_count == 0
    assert state(post) == {"pending": True, "current": False}


def test_a_change_that_leaves_the_text_as_it_was_sends_nothing(fake_gemini, topics):
    post = Post.objects.create(title="A weekend away")
    post.topics.add(topics["hiking"])
    fake_gemini.reset()
    post.topics.add(topics["hiking"])  # already there
    post.topics.set([topics["hiking"]])
    assert fake_gemini.request_count == 0
    assert state(post) == SETTLED
