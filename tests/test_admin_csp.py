"""Every admin page the app adds works under a Content-Security-Policy without 'unsafe-inline'.

Such a policy (django-csp, Django 6's ``SECURE_CSP``) makes the browser refuse every
``style`` attribute, ``<style>`` element, inline ``<script>`` and event-handler attribute;
Django's own admin pages have none, and neither may ours: their styling comes from
``semantic/static/semantic/admin.css``.
"""

import re

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.core.cache import cache
from django.urls import reverse

from semantic import embed_pending
from semantic.models import DismissedPair, EmbeddingFailure
from tests.testapp.models import Article
from tests.topicapp.models import Ticket

pytestmark = pytest.mark.django_db(transaction=True)

#: What a policy without 'unsafe-inline' refuses, as it appears in a page's HTML.
INLINE = {
    "style attribute": re.compile(r"<[^>]*\sstyle\s*=", re.I),
    "<style> element": re.compile(r"<style[\s>]", re.I),
    "inline <script>": re.compile(r"<script(?![^>]*\ssrc\s*=)[^>]*>", re.I),
    "event handler attribute": re.compile(r"<[^>]*\son[a-z]+\s*=", re.I),
    "javascript: link": re.compile(r"=\s*[\"']?javascript:", re.I),
}
STYLESHEET = "semantic/admin.css"


def inline_parts(html):
    return {name: pattern.findall(html)[:3] for name, pattern in INLINE.items() if pattern.search(html)}


#: Two pairs of near duplicates, for the duplicate review and Compare pages.
TITLES = [
    "reset my account password",
    "reset the password of my account",
    "export invoices as csv",
    "export all invoices to csv",
]


@pytest.fixture
def pages(admin_client, fake_gemini):
    """The pages the app adds (and the admin pages it changes), each with rows to show."""
    cache.clear()
    Article.objects.bulk_create(Article(title=title) for title in TITLES)
    Ticket.objects.bulk_create(
        Ticket(text=text, category=category)
        for text, category in [
            ("my card has not arrived", "card_arrival"),
            ("where is my new card", ""),
            ("I forgot my passcode", "passcode_forgotten"),
            ("reset my passcode please", ""),
        ]
    )
    embed_pending()
    a, b, c, _ = Article.objects.order_by("pk")
    EmbeddingFailure.objects.create(
        model_label="testapp.Article", field_name="embedding", object_pk=str(c.pk), error="The API said no.", attempts=1
    )
    DismissedPair.objects.create(
        model_label="testapp.Article", field_name="embedding", first_pk=str(a.pk), second_pk=str(c.pk)
    )
    articles = reverse("admin:testapp_article_changelist")
    tickets = reverse("admin:topicapp_ticket_changelist")

    def act(changelist, action, *pks):
        return admin_client.post(changelist, {"action": action, "index": 0, ACTION_CHECKBOX_NAME: pks}, follow=True)

    return {
        "changelist": admin_client.get(articles),
        "changelist searched by meaning": admin_client.get(articles, {"q": "reset password", "semantic": "1"}),
        "change form with similar items": admin_client.get(reverse("admin:testapp_article_change", args=[a.pk])),
        "find similar": act(articles, "find_similar", a.pk, c.pk),
        "duplicate review": admin_client.get(reverse("admin:testapp_article_duplicates"), {"threshold": "0.3"}),
        "duplicates among selected": act(articles, "find_duplicates", a.pk, b.pk, c.pk),
        "compare": admin_client.get(
            reverse("admin:testapp_article_compare_duplicates"), {"first": a.pk, "second": b.pk}
        ),
        "topics": admin_client.get(reverse("admin:topicapp_ticket_topics"), {"semantic_groups": "2"}),
        "apply suggested labels": act(tickets, "apply_suggested_labels", *Ticket.objects.values_list("pk", flat=True)),
        "embedding status": admin_client.get(reverse("admin:semantic_status")),
        "embedding failures": admin_client.get(reverse("admin:semantic_embeddingfailure_changelist")),
        "pairs marked not duplicates": admin_client.get(reverse("admin:semantic_dismissedpair_changelist")),
    }


def test_no_page_the_app_adds_needs_unsafe_inline(pages):
    found = {}
    for name, response in pages.items():
        assert response.status_code == 200, name
        html = response.content.decode()
        if inline_parts(html):
            found[name] = inline_parts(html)
    assert found == {}
    # What the styles were for is still there, in markup a strict policy lets through.
    searched = pages["changelist searched by meaning"].content.decode()
    assert re.search(r'<meter class="semantic-bar" min="0" max="1" value="0\.\d{3}"', searched)
    assert 'class="semantic-differs"' in pages["compare"].content.decode()
    for name in ("changelist searched by meaning", "duplicate review", "compare", "find similar", "topics"):
        assert f'<link rel="stylesheet" href="/static/{STYLESHEET}">' in pages[name].content.decode(), name


def test_djangos_own_admin_pages_pass_the_same_check(admin_client):
    """The check holds Django's admin to the same standard: a page of ours failing it is ours."""
    user = User.objects.get()
    for url in (reverse("admin:auth_user_changelist"), reverse("admin:auth_user_change", args=[user.pk])):
        assert inline_parts(admin_client.get(url).content.decode()) == {}, url
