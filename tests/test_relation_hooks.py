"""Text from a property that reads many-to-many rows (a tag list, as django-taggit's is
read) follows changes of those relations, made after the row's save as forms make them."""

import threading
import time
from functools import partial

import psycopg
import pytest
from django import forms
from django.contrib.auth.models import Group, User
from django.db import connection, connections, transaction
from django.db.models.signals import m2m_changed
from django.test.utils import CaptureQueriesContext

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


def test_renaming_or_deleting_a_tag_embeds_the_rows_that_read_it(fake_gemini, topics):
    """No m2m_changed: a tag renamed changes the text of the rows that read it, and a tag deleted
    takes its links with it (a cascade, without signals)."""
    post = Post.objects.create(title="A weekend away")
    post.topics.set([topics["hiking"], topics["beach"]])
    fake_gemini.reset()
    topics["hiking"].name = "trekking"
    topics["hiking"].save()
    topics["beach"].delete()
    Topic.objects.filter(name="swimming").delete()  # a queryset's delete: linked to no row
    Topic.objects.create(name="sailing")  # a new tag: linked to no row yet
    assert fake_gemini.texts() == ["A weekend away\n\nbeach, trekking", "A weekend away\n\ntrekking"]
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
    with transaction.atomic():  # the worker, woken on commit, hashes the row and finds its old text
        post.topics.remove(topics["hiking"])
        post.topics.add(topics["hiking"])
    assert fake_gemini.request_count == 0
    assert state(post) == SETTLED


def test_a_row_another_transaction_holds_is_left_pending_once_it_is_let_go(fake_gemini, topics):
    """The hook waits for the row as a save does: a hash stored only where no one held the
    row (the worker's way) left a held row with its old tags' vector, counted as embedded."""
    post = Post.objects.create(title="A weekend away")
    changes = []

    def change_the_tags():
        try:
            with suspend_embedding():  # so that the row's state after the change is seen, not the worker's
                post.topics.add(topics["hiking"])
            changes.append("done")
        finally:
            connections.close_all()  # this thread's own connection

    user = psycopg.connect(**connection.get_connection_params())  # not autocommit: the lock stays
    user.execute(f"SELECT id FROM {Post._meta.db_table} WHERE id = %s FOR NO KEY UPDATE", [post.pk])
    thread = threading.Thread(target=change_the_tags)
    thread.start()
    try:
        # Until the change waits for the row, or has ended without it (the bug): then the user lets go.
        while thread.is_alive() and not user.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchone():
            time.sleep(0.01)
        user.rollback()
    finally:
        user.close()
        thread.join()
    assert changes == ["done"]
    assert state(post) == {"pending": True, "current": False}


def queries(change):
    """The statements ``change()`` runs in the request, before the commit hands rows to the worker."""
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        change()
    return [query["sql"] for query in captured.captured_queries]


def test_relations_of_models_without_an_embedding_field_cost_what_they_cost_without_the_hook():
    """What Django alone runs: an ``add()`` is one ``INSERT ... ON CONFLICT DO NOTHING``, a
    ``remove()`` or ``clear()`` one ``DELETE``. A receiver of the relation's changes would make
    each ``add()`` first read which rows are linked already."""
    user = User.objects.create(username="ada")
    groups = [Group.objects.create(name=f"group {n}") for n in range(3)]

    def change():
        user.groups.add(*groups)
        user.groups.remove(groups[0])
        user.groups.clear()
        groups[1].user_set.add(user)

    assert [sql.split()[0] for sql in queries(change)] == ["INSERT", "DELETE", "DELETE", "INSERT"]
    assert not m2m_changed.has_listeners(User.groups.through)


def test_changing_many_rows_costs_as_many_statements_as_changing_a_few(fake_gemini, semantic_settings):
    """No query per row, nor a list of the rows' keys, in the request: the rows are left
    pending with one statement, whatever their number, and the worker hashes them."""
    semantic_settings(SYNC=False)
    counts = {}
    for size in (10, 200):
        topic = Topic.objects.create(name=f"{size} posts")
        with suspend_embedding():
            posts = Post.objects.bulk_create([Post(title=f"Post {n}") for n in range(size)])
        counts[size] = {
            "add": len(queries(partial(topic.posts.add, *posts))),
            "clear": len(queries(topic.posts.clear)),
        }
    assert counts[10] == counts[200]


def test_a_backend_that_cannot_be_imported_does_not_break_a_change_of_tags(fake_gemini, topics, semantic_settings):
    """As a save does not: the hook builds no backend in the request; the worker reports it."""
    post = Post.objects.create(title="A weekend away")
    semantic_settings(SYNC=False, BACKEND="semantic.backends.nope.Backend")
    post.topics.add(topics["hiking"])
    assert state(post) == {"pending": True, "current": False}
