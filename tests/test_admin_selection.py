"""Find duplicates among selected under every session engine (semantic.admin_selection)."""

import hashlib
import random

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import override_settings
from django.urls import reverse

from semantic import embed_pending, suspend_embedding
from semantic.admin_duplicates import DuplicateReviewMixin
from semantic.admin_selection import KEPT
from semantic.models import ReviewSelection
from tests.testapp.models import Article, Report

pytestmark = pytest.mark.django_db(transaction=True)

#: Browsers drop a cookie whose name and value pass 4,096 bytes, silently keeping the old one.
COOKIE_LIMIT = 4096
COOKIE_SESSIONS = "django.contrib.sessions.backends.signed_cookies"


def topic(n):
    """Two rows a topic, in words no other topic shares (the fake vectors are bags of words)."""
    digest = hashlib.blake2b(str(n // 2).encode(), digest_size=12).hexdigest()
    return " ".join(digest[i : i + 6] for i in range(0, len(digest), 6))


def uuid_rows():
    with suspend_embedding():
        Report.objects.bulk_create(Report(title=f"report {n}", body=topic(n)) for n in range(500))
    return Report


def bigint_rows():
    """Sparse keys, as a real table's are after years of deletes: they compress no better than random."""
    keys = random.Random(0).sample(range(10**17, 9 * 10**18), 500)
    with suspend_embedding():
        Article.objects.bulk_create(Article(pk=pk, title=topic(n)) for n, pk in enumerate(keys))
    return Article


def cookie_sizes(response):
    return {name: len(name) + len(morsel.value) for name, morsel in response.cookies.items()}


@pytest.mark.parametrize("make_rows", [uuid_rows, bigint_rows], ids=["uuid", "bigint"])
def test_find_duplicates_among_500_selected_rows_with_cookie_sessions(client, fake_gemini, make_rows):
    cache.clear()
    model = make_rows()
    embed_pending()
    opts = model._meta
    with override_settings(SESSION_ENGINE=COOKIE_SESSIONS):
        client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        keys = [str(pk) for pk in model.objects.values_list("pk", flat=True)]
        data = {"action": "find_duplicates", "index": 0, ACTION_CHECKBOX_NAME: keys}
        acted = client.post(changelist, data)
        assert acted.status_code == 302 and len(acted["Location"]) < 100
        assert all(size <= COOKIE_LIMIT for size in cookie_sizes(acted).values()), cookie_sizes(acted)
        page = client.get(acted["Location"])
    assert page.status_code == 200
    assert page.context["selected_count"] == 500
    assert "Among the 500 selected rows." in page.content.decode()
    assert len(page.context["groups"]) == page.context["page"].paginator.per_page
    assert all(len(group.rows) == 2 for group in page.context["groups"])
    assert all(size <= COOKIE_LIMIT for size in cookie_sizes(page).values()), cookie_sizes(page)


def test_a_user_keeps_their_newest_selections_and_sees_no_one_elses(client, fake_gemini):
    cache.clear()
    with suspend_embedding():
        rows = Article.objects.bulk_create(Article(title=f"article {n}") for n in range(KEPT + 1))
    embed_pending()
    changelist = reverse("admin:testapp_article_changelist")
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    links = []
    for n in range(KEPT + 1):
        pair = [rows[n].pk, rows[(n + 1) % len(rows)].pk]
        data = {"action": "find_duplicates", "index": 0, ACTION_CHECKBOX_NAME: pair}
        links.append(client.post(changelist + "?q=article", data)["Location"])
    assert ReviewSelection.objects.count() == KEPT
    assert client.get(links[-1]).context["selected_count"] == 2
    # The oldest is gone: the page says so and goes back to the list as it was filtered.
    gone = client.get(links[0], follow=True)
    assert gone.redirect_chain == [(changelist + "?q=article", 302)]
    assert [str(m) for m in gone.context["messages"]] == [str(DuplicateReviewMixin.SELECTION_GONE)]
    # Selecting the same rows again reuses the selection instead of keeping a copy.
    data = {"action": "find_duplicates", "index": 0, ACTION_CHECKBOX_NAME: [rows[1].pk, rows[2].pk]}
    assert client.post(changelist + "?q=article", data)["Location"] == links[1]
    assert ReviewSelection.objects.count() == KEPT
    # Another user's link names nothing for this one.
    client.force_login(User.objects.create_superuser("other", "other@example.com", "pw"))
    response = client.get(links[-1], follow=True)
    assert [str(m) for m in response.context["messages"]] == [str(DuplicateReviewMixin.SELECTION_GONE)]
