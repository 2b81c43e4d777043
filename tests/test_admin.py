"""The admin mixin, the embedding status page and their permissions, through the test client."""

import html
import io
import re
import threading
from datetime import timedelta
from types import ModuleType

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.db.backends.signals import connection_created
from django.template.defaultfilters import floatformat
from django.test.utils import CaptureQueriesContext, isolate_apps
from django.urls import path, reverse
from django.utils import timezone, translation

from project.questions.models import Question
from semantic import duplicates, embed_pending, suspend_embedding
from semantic.admin import (
    FIND_SIMILAR_NO_TEXT,
    FIND_SIMILAR_UNAVAILABLE,
    NO_FIELD,
    NO_FIELD_HINT,
    EmbeddingFailureAdmin,
    SemanticAdminMixin,
)
from semantic.admin_search import SEARCH_UNAVAILABLE
from semantic.management.commands.semantic_embed import Command
from semantic.models import DismissedPair, EmbeddingBatchJob, EmbeddingFailure
from semantic.registry import get_embedding_field
from tests.fake_gemini import api_error
from tests.slow_statements import SLOW_ROWS
from tests.testapp.admin import ArticleAdmin
from tests.testapp.models import Article, Entry, Ledger, Note, Report
from tests.topicapp.models import Queue, Request

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "admin:testapp_article_changelist"
DUPLICATES = "admin:testapp_article_duplicates"
DISMISS = "admin:testapp_article_dismiss_duplicate"


@pytest.fixture
def articles(fake_gemini):
    cache.clear()
    Article.objects.bulk_create(
        [
            Article(title="reset my account password"),
            Article(title="reset the password of my account"),
            Article(title="export invoices as csv"),
            Article(title="export all invoices to csv"),
            Article(title="reset account password secret", category="hidden"),
        ]
    )
    embed_pending()
    fake_gemini.reset()
    return {a.title: a for a in Article.objects.all()}


def staff(username, *perms):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


@pytest.fixture
def viewer(client):
    client.force_login(staff("viewer", "view_article", "view_embeddingfailure"))
    return client


@pytest.fixture
def editor(client):
    client.force_login(
        staff("editor", "view_article", "change_article", "view_embeddingfailure", "change_embeddingfailure")
    )
    return client


def act(client, action, *objs):
    data = {"action": action, "index": 0, "_selected_action": [o.pk for o in objs]}
    return client.post(reverse(CHANGELIST), data, follow=True)


def failed(obj):
    """The failure record the worker leaves for ``obj`` when the API refuses its text for good."""
    return EmbeddingFailure.objects.create(
        model_label=obj._meta.label, field_name="embedding", object_pk=str(obj.pk), error="refused", permanent=True
    )


def test_changelist_shows_state_column_and_filters_by_it(editor, articles):
    with suspend_embedding():
        Article.objects.create(title="waiting")
    response = editor.get(reverse(CHANGELIST))
    assert "embedding" in [h["text"] for h in response.context["result_headers"]]
    assert "pending" in response.content.decode()
    response = editor.get(reverse(CHANGELIST), {"embedding_state": "pending"})
    assert [a.title for a in response.context["cl"].result_list] == ["waiting"]


def test_the_app_name_and_state_names_reach_a_translator(admin_client, articles, in_german):
    """The app's name, each state's name (column, filter, status table) and the wait: German
    throughout once a catalog has them, the states' values in URLs unchanged."""
    in_german({"Semantic search": "Semantische Suche", "embedding state\x04pending": "wartend"})
    with suspend_embedding():
        waiting = Article.objects.create(title="waiting for its vector")
    Article.objects.filter(pk=waiting.pk).update(embedding_pending_since=timezone.now() - timedelta(hours=3))
    assert "Semantische Suche" in admin_client.get(reverse("admin:index")).content.decode()
    listed = admin_client.get(reverse(CHANGELIST))
    assert '<td class="field-embedding_state">wartend</td>' in listed.content.decode()
    cl = listed.context["cl"]
    choices = [(c["display"], c["query_string"]) for f in cl.filter_specs for c in f.choices(cl)]
    assert ("wartend", "?embedding_state=pending") in choices
    status = admin_client.get(reverse("admin:semantic_status")).content.decode()
    assert '<th scope="col">wartend</th>' in status and "3\xa0Stunden" in status and " ago" not in status


def test_find_similar_lists_neighbours_with_scores(viewer, articles):
    response = act(viewer, "find_similar", articles["reset my account password"])
    assert response.status_code == 200
    ((obj, neighbours),) = response.context["results"]
    assert neighbours[0].title == "reset the password of my account"
    assert all(n.title != "reset account password secret" for n in neighbours)  # hidden by get_queryset
    page = response.content.decode()
    assert reverse("admin:testapp_article_change", args=[neighbours[0].pk]) in page
    assert f"{neighbours[0].similarity:.3f}" in page


def test_pages_reached_from_a_filtered_list_lead_back_to_it_as_it_was(editor, articles):
    """Find similar's back link and breadcrumb, the changelist's "Review duplicates" link (and
    so the review's), and Compare's breadcrumb keep the list's filters, search and page."""
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    listed = reverse(CHANGELIST) + "?category__exact=&q=export&p=1"
    back = f'href="{html.escape(listed)}"'
    data = {"action": "find_similar", "index": 0, "_selected_action": [a.pk]}
    similar = editor.post(listed, data).content.decode()
    assert similar.count(back) == 2  # the breadcrumb and "Back to the list"

    page = editor.get(listed).content.decode()
    review_link = html.unescape(re.search(r'<a href="([^"]+)">Review duplicates</a>', page).group(1))
    assert review_link == reverse(DUPLICATES) + "?_changelist_filters=category__exact%3D%26q%3Dexport%26p%3D1"
    review = editor.get(review_link)
    assert review.context["back_url"] == listed
    compare = editor.get(reverse(COMPARE), {"first": a.pk, "second": b.pk, "_changelist_filters": listed.split("?")[1]})
    breadcrumbs = re.search(r'<div class="breadcrumbs">.*?</div>', compare.content.decode(), re.S).group(0)
    assert back in breadcrumbs


def test_find_similar_for_several_rows_and_an_unembedded_one(viewer, articles):
    with suspend_embedding():
        new = Article.objects.create(title="not embedded yet")
    response = act(viewer, "find_similar", articles["export invoices as csv"], new)
    results = dict(response.context["results"])
    assert results[new] is None
    assert "Not embedded yet" in response.content.decode()


def test_find_similar_says_when_it_left_selected_rows_out(viewer, articles):
    model_admin = admin.site._registry[Article]
    model_admin.similar_rows_shown = 2
    try:
        chosen = ("reset my account password", "export invoices as csv", "export all invoices to csv")
        response = act(viewer, "find_similar", *[articles[t] for t in chosen])
    finally:
        del model_admin.similar_rows_shown
    assert len(response.context["results"]) == 2
    assert "Showing the first 2 of 3 selected items." in response.content.decode()
    assert "selected items" not in act(viewer, "find_similar", articles["export invoices as csv"]).content.decode()


def test_find_similar_stops_trying_the_api_after_it_fails_once(viewer, articles, fake_gemini, semantic_settings):
    """A hung API: the first row that needs its text embedded waits SEARCH_TIMEOUT and
    fails; the others needing the API are not tried (one wait, one warning, one request,
    not one per row), and a row whose stored vector is current is still answered."""
    semantic_settings(SEARCH_TIMEOUT=0.2)
    changed = ["reset my account password", "reset the password of my account", "export invoices as csv"]
    for title in changed:  # vectors out of date: each would be searched with its text, embedded now
        Article.objects.filter(pk=articles[title].pk).update(title=f"{title}, changed behind save")
    current = articles["export all invoices to csv"]
    released = threading.Event()
    fake_gemini.on_request = lambda record: released.wait(timeout=3)
    try:
        response = act(viewer, "find_similar", *[articles[t] for t in changed], current)
    finally:
        released.set()
    assert response.status_code == 200
    assert fake_gemini.request_count == 1
    warnings = [str(m) for m in response.context["messages"]]
    assert len(warnings) == 1 and warnings[0].startswith(find_similar_unavailable(3)) and "timed out" in warnings[0]
    results = {obj.pk: neighbours for obj, neighbours in response.context["results"]}
    assert response.context["unavailable"] == [articles[t].pk for t in changed]
    assert all(results[articles[t].pk] is None for t in changed)
    assert [a.title for a in results[current.pk]][:1] == ["export invoices as csv, changed behind save"]
    assert response.content.decode().count("Not searched: its stored embedding is out of date") == 3


def find_similar_unavailable(count):
    """The action's warning up to its reason (the SearchUnavailable's message)."""
    return (FIND_SIMILAR_UNAVAILABLE % {"count": count, "reason": "\0"}).split("\0")[0]


def test_find_similar_with_the_api_down_says_no_similar_items_were_found_and_why(viewer, articles, fake_gemini):
    """Rows whose text must be embedded get no results: the warning says so, for how many
    rows, and ends with what to do, not with the changelist's "showing results without it"."""
    out_of_date = [articles["reset my account password"], articles["export invoices as csv"]]
    for row in out_of_date:
        Article.objects.filter(pk=row.pk).update(title=f"{row.title}, changed behind save")
    fake_gemini.fail_every(500, body=api_error(500, "fake error 500", "INTERNAL"))
    response = act(viewer, "find_similar", *out_of_date)
    assert response.status_code == 200
    (warning,) = [str(m) for m in response.context["messages"]]
    reason = warning.removeprefix(find_similar_unavailable(2))
    assert reason != warning and reason.startswith("Search is unavailable") and reason.endswith("Try again later.")
    assert warning == FIND_SIMILAR_UNAVAILABLE % {"count": 2, "reason": reason}
    assert "showing results" not in warning and "500" in reason
    assert [neighbours for _, neighbours in response.context["results"]] == [None, None]
    assert response.context["unavailable"] == [row.pk for row in out_of_date]


def test_find_similar_on_a_row_left_with_no_text_says_so(viewer, articles, fake_gemini):
    row = articles["reset my account password"]
    Article.objects.filter(pk=row.pk).update(title="  ", body="")
    response = act(viewer, "find_similar", row)
    (warning,) = [str(m) for m in response.context["messages"]]
    assert warning == FIND_SIMILAR_NO_TEXT.format(reason=f"Article #{row.pk} has no text to search with.")
    assert fake_gemini.request_count == 0


def test_admin_pages_that_embed_give_a_hung_api_search_timeout_once(viewer, articles, fake_gemini, semantic_settings):
    """Search by meaning answers with a warning after one request of SEARCH_TIMEOUT, long
    before the worker's TIMEOUT (the request time-out of gunicorn and Heroku); the change
    form of a row whose vector is out of date does not call the API at all."""
    semantic_settings(TIMEOUT=30.0, SEARCH_TIMEOUT=0.2)
    stale = articles["reset my account password"]
    Article.objects.filter(pk=stale.pk).update(title="a text changed behind save")
    released = threading.Event()
    fake_gemini.on_request = lambda record: released.wait(timeout=3)
    try:
        search = viewer.get(reverse(CHANGELIST), {"q": "a query never embedded before", "semantic": "1"})
        form = viewer.get(reverse("admin:testapp_article_change", args=[stale.pk]))
    finally:
        released.set()
    assert search.status_code == 200
    (warning,) = [str(m) for m in search.context["messages"]]
    assert warning.startswith(SEARCH_UNAVAILABLE.split("(")[0]) and "timed out" in warning
    assert form.status_code == 200 and not list(form.context["messages"])
    assert form.context["semantic_similar"] is None
    assert fake_gemini.request_count == 1


def test_action_without_selection_says_so(viewer, articles):
    response = viewer.post(reverse(CHANGELIST), {"action": "find_similar", "index": 0}, follow=True)
    assert "Items must be selected" in response.content.decode()


def test_find_duplicates_among_selected(viewer, articles):
    chosen = ("reset my account password", "reset the password of my account", "export invoices as csv")
    response = act(viewer, "find_duplicates", *[articles[t] for t in chosen])
    groups = response.context["groups"]
    # 0.816 similar with the fake server's vectors, over the default threshold of 0.81
    assert [{a.title for a in group.rows} for group in groups] == [set(chosen[:2])]


def test_reembed_needs_change_permission(viewer, articles):
    response = viewer.get(reverse(CHANGELIST))
    assert "reembed" not in response.context["action_form"].fields["action"].choices.__repr__()


def test_reembed_queues_and_says_how_many(editor, articles, fake_gemini):
    response = act(editor, "reembed", articles["export invoices as csv"], articles["export all invoices to csv"])
    assert "Queued 2 rows for embedding." in response.content.decode()
    assert fake_gemini.request_count == 1 and len(fake_gemini.texts()) == 2  # SYNC in tests: done on commit


@pytest.fixture
def locked(monkeypatch):
    """ArticleAdmin refuses to change rows titled "locked …", as a row's change form asks it
    (``has_change_permission(request, obj)``); the model permission stays."""
    model_admin = admin.site._registry[Article]
    declared = type(model_admin).has_change_permission

    def has_change_permission(request, obj=None):
        if obj is not None and obj.title.startswith("locked"):
            return False
        return declared(model_admin, request, obj)

    monkeypatch.setattr(model_admin, "has_change_permission", has_change_permission)


def test_reembed_leaves_out_rows_the_modeladmin_refuses_to_change(editor, articles, fake_gemini, locked):
    free = articles["export invoices as csv"]
    held = Article.objects.create(title="locked export of invoices")
    assert editor.post(reverse("admin:testapp_article_change", args=[held.pk]), {"title": "x"}).status_code == 403
    fake_gemini.reset()
    response = act(editor, "reembed", free, held)
    assert [str(m) for m in response.context["messages"]] == [
        "Queued 1 row for embedding.",
        "1 selected row is left out: you may not change it.",
    ]
    assert len(fake_gemini.texts()) == 1 and "locked" not in fake_gemini.texts()[0]


def test_not_a_duplicate_needs_the_modeladmin_to_let_the_user_change_both_rows(editor, articles, locked):
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    held = Article.objects.create(title="locked export invoices as csv")
    assert editor.post(reverse(DISMISS), {"first": a.pk, "second": held.pk}).status_code == 403
    assert not DismissedPair.objects.exists()
    assert "Not a duplicate" not in editor.get(reverse(COMPARE), {"first": a.pk, "second": held.pk}).content.decode()
    assert "Not a duplicate" in editor.get(reverse(COMPARE), {"first": a.pk, "second": b.pk}).content.decode()
    review = editor.get(reverse(DUPLICATES), {"threshold": "0.5"})
    assert any(held in group.rows for group in review.context["groups"])
    offered = DISMISS_FORM.findall(review.content.decode())
    assert (str(min(a.pk, b.pk)), str(max(a.pk, b.pk))) in {tuple(sorted(p, key=int)) for p in offered}
    assert all(str(held.pk) not in pair for pair in offered)


@pytest.fixture
def confidential(monkeypatch):
    """ArticleAdmin refuses to show rows titled "confidential …" per row (neither view nor
    change: their change form answers 403), while the list still lists them."""
    model_admin = admin.site._registry[Article]
    for name in ("has_view_permission", "has_change_permission"):
        declared = getattr(type(model_admin), name)

        def refuse(request, obj=None, declared=declared):
            if obj is not None and obj.title.startswith("confidential"):
                return False
            return declared(model_admin, request, obj)

        monkeypatch.setattr(model_admin, name, refuse)


def test_compare_and_review_show_no_field_of_a_row_the_modeladmin_refuses_to_show(editor, articles, confidential):
    a = articles["export invoices as csv"]
    secret = Article.objects.create(title="confidential export invoices as csv", body="salary cuts")
    assert editor.get(reverse("admin:testapp_article_change", args=[secret.pk])).status_code == 403
    for first, second in ((a, secret), (secret, a)):
        assert editor.get(reverse(COMPARE), {"first": first.pk, "second": second.pk}).status_code == 403
    review = editor.get(reverse(DUPLICATES), {"threshold": "0.3"})
    assert any(secret in group.rows for group in review.context["groups"])  # listed, as the changelist lists it
    page = review.content.decode()
    assert "salary cuts" not in page
    assert not re.search(rf"(first|second)={secret.pk}&", page)  # no "Compare" link that would answer 403
    assert re.search(rf"(first|second)={a.pk}&", page)


def test_retry_failed_rows_leaves_out_rows_the_modeladmin_refuses_to_change(editor, articles, fake_gemini, locked):
    fake_gemini.reject_marker = "REJECT"
    Article.objects.create(title="REJECT free")
    held = Article.objects.create(title="locked REJECT")
    assert EmbeddingFailure.objects.count() == 2
    fake_gemini.reject_marker = None
    retried = editor.post(reverse("admin:semantic_status"), follow=True)
    assert [str(m) for m in retried.context["messages"]] == [
        "Queued 1 failed row again.",
        "Skipped 1 failed row: its model or field is gone, its key is malformed, or you may not change it.",
    ]
    assert list(EmbeddingFailure.objects.values_list("object_pk", flat=True)) == [str(held.pk)]


def test_duplicate_review_page_with_adjustable_threshold(viewer, articles):
    response = viewer.get(reverse(DUPLICATES), {"threshold": "0.5"})
    assert response.status_code == 200
    titles = [{a.title for a in group.rows} for group in response.context["groups"]]
    assert {"reset my account password", "reset the password of my account"} in titles
    assert all("reset account password secret" not in t for t in titles)
    assert viewer.get(reverse(DUPLICATES), {"threshold": "0.999"}).context["groups"] == []


def test_duplicate_review_with_use_tz_false_shows_when_its_kept_pairs_were_found(viewer, articles, settings):
    """Django's naive-datetime mode: the pairs' time is a local time already (timezone.localtime()
    refuses it: the page was a 500 whenever the pairs were kept, the default)."""
    settings.USE_TZ = False
    model_admin = admin.site._registry[Article]
    assert model_admin.duplicate_cache_seconds
    response = viewer.get(reverse(DUPLICATES), {"threshold": "0.5"})
    assert response.status_code == 200
    assert {"reset my account password", "reset the password of my account"} in [
        {a.title for a in group.rows} for group in response.context["groups"]
    ]
    moment = re.search(r"Pairs as found at (\d\d:\d\d:\d\d), kept for 5 minutes", response.content.decode())
    assert moment is not None
    again = viewer.get(reverse(DUPLICATES), {"threshold": "0.5"})  # from the cache
    assert again.status_code == 200 and moment.group(0) in again.content.decode()


class SlowArticleAdmin(ArticleAdmin):
    """Every statement over its rows lasts as a whole-table duplicate search does on a large table."""

    def get_queryset(self, request):
        return super().get_queryset(request).filter(pk__gte=SLOW_ROWS)


def serve_admin_site(settings, name: str, model, model_admin) -> admin.AdminSite:
    """An admin site of its own with one model, served as the test's URLconf under ``<name>/``:
    one in tests/urls.py would fail every ``check``."""
    site = admin.AdminSite(name=name)
    site.register(model, model_admin)
    urlconf = ModuleType(f"{name}_urls")
    urlconf.urlpatterns = [path(f"{name}/", site.urls)]
    settings.ROOT_URLCONF = urlconf
    return site


@pytest.fixture
def slow_site(settings):
    return serve_admin_site(settings, "slowadmin", Article, SlowArticleAdmin)


def test_duplicate_review_the_statement_timeout_cancels_says_why_and_what_to_do(
    viewer, articles, slow_site, statement_timeout_2s
):
    response = viewer.get(reverse("slowadmin:testapp_article_duplicates"), {"threshold": "0.5"})
    assert response.status_code == 200
    expected = SlowArticleAdmin.SEARCH_CANCELED % {"timeout": "2s", "max": SlowArticleAdmin.duplicate_selection_max}
    assert response.context["search_error"] == expected
    assert html.escape(expected) in response.content.decode()
    assert response.context["groups"] == []
    assert "No likely duplicates" not in response.content.decode()  # nothing was searched


@pytest.mark.parametrize("bad", ["abc", "2", "-1.5", "nan", "inf"])
def test_duplicate_review_rejects_bad_thresholds_and_keeps_them_in_the_form(viewer, articles, bad):
    response = viewer.get(reverse(DUPLICATES), {"threshold": bad})
    assert response.status_code == 200
    page = response.content.decode()
    assert "must be a number from -1 to 1" in page
    assert f'name="threshold" value="{bad}"' in page
    assert response.context["groups"] == []


def test_duplicate_review_takes_the_threshold_as_the_language_writes_it(viewer, articles, settings):
    """A German page shows "0,50", so a German "0,5" is the threshold 0.5 (a point still works),
    and what the form and its links carry back is read the same way again."""
    settings.LANGUAGE_CODE = "de"
    with translation.override("de"):
        comma = viewer.get(reverse(DUPLICATES), {"threshold": "0,5"})
        assert comma.context["threshold_error"] is None
        titles = [{a.title for a in group.rows} for group in comma.context["groups"]]
        assert {"reset my account password", "reset the password of my account"} in titles
        point = viewer.get(reverse(DUPLICATES), {"threshold": "0.5"})
        assert titles == [{a.title for a in group.rows} for group in point.context["groups"]]
        default = viewer.get(reverse(DUPLICATES))
        shown = re.search(r'name="threshold" value="([^"]*)"', default.content.decode()).group(1)
        assert shown == "0,81"
        again = viewer.get(reverse(DUPLICATES), {"threshold": shown})
        assert again.context["threshold_error"] is None


def test_duplicate_review_is_bounded_and_says_what_it_left_out(viewer, fake_gemini):
    """At threshold -1 every row is linked to its neighbours: one group of hundreds of rows."""
    cache.clear()
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"topic {i % 30} note {i} word {i % 7}") for i in range(300))
    embed_pending()
    model_admin = admin.site._registry[Article]
    per_page, pairs_shown = model_admin.duplicate_groups_per_page, model_admin.duplicate_pairs_shown
    response = viewer.get(reverse(DUPLICATES), {"threshold": "-1"})
    assert response.status_code == 200
    page = response.content.decode()
    groups = response.context["groups"]
    assert 1 <= len(groups) <= per_page
    biggest = groups[0]
    assert biggest.size > 100 and biggest.total_pairs > pairs_shown
    assert len(biggest.pairs) == pairs_shown
    assert page.count('class="semantic-score"') <= per_page * pairs_shown
    assert f"Showing the {pairs_shown} most similar of {biggest.total_pairs} pairs" in page
    # The pairs shown are the group's most similar, in order.
    scores = [s for _, _, s in biggest.pairs]
    assert scores == sorted(scores, reverse=True)


@pytest.fixture
def three_pairs_two_groups_a_page(fake_gemini):
    """Three pairs of twin Articles, embedded; the duplicate review shows two groups a page."""
    cache.clear()
    with suspend_embedding():
        Article.objects.bulk_create(
            Article(title=f"pair {i} alpha{i} beta{i} gamma{i}") for i in range(3) for _ in (0, 1)
        )
    embed_pending()
    model_admin = admin.site._registry[Article]
    model_admin.duplicate_groups_per_page = 2
    yield
    del model_admin.duplicate_groups_per_page


def test_duplicate_review_pages_through_groups(viewer, three_pairs_two_groups_a_page):
    first = viewer.get(reverse(DUPLICATES), {"threshold": "0.99"})
    second = viewer.get(reverse(DUPLICATES), {"threshold": "0.99", "page": "2"})
    assert len(first.context["groups"]) == 2 and len(second.context["groups"]) == 1
    seen = [frozenset(g.rows) for response in (first, second) for g in response.context["groups"]]
    assert len(set(seen)) == 3
    assert "?threshold=0.99&amp;page=2" in first.content.decode()
    assert "Page 1 of 2" in first.content.decode()


def test_duplicate_review_searches_once_for_its_pages_dismissals_and_deletions(editor, three_pairs_two_groups_a_page):
    """The whole table's search takes seconds on a big table: the review keeps its pairs a while."""
    with CaptureQueriesContext(connection) as queries:
        first = editor.get(reverse(DUPLICATES), {"threshold": "0.99"})
        second = editor.get(reverse(DUPLICATES), {"threshold": "0.99", "page": "2"})
        (group,) = second.context["groups"]
        a, b, _ = group.pairs[0]
        data = {"first": a.pk, "second": b.pk, "threshold": "0.99", "page": "2"}
        back = editor.post(reverse(DISMISS), data, follow=True)
        Article.objects.filter(pk=first.context["groups"][0].rows[0].pk).delete()
        after_delete = editor.get(reverse(DUPLICATES), {"threshold": "0.99"})
    searches = [q for q in queries if "semantic_outer" in q["sql"]]
    assert len(searches) == 1
    # Another threshold is another search.
    with CaptureQueriesContext(connection) as queries:
        editor.get(reverse(DUPLICATES), {"threshold": "0.98"})
    assert len([q for q in queries if "semantic_outer" in q["sql"]]) == 1
    shown = [frozenset(g.rows) for response in (first, second) for g in response.context["groups"]]
    assert len(set(shown)) == 3
    # The pair marked not a duplicate and the deleted row's pair are gone from the kept pairs.
    assert [set(g.rows) for g in back.context["groups"]] == [set(g.rows) for g in first.context["groups"]]
    assert {a, b} not in [set(g.rows) for g in back.context["groups"]]
    assert [set(g.rows) for g in after_delete.context["groups"]] == [set(first.context["groups"][1].rows)]
    assert "kept for 5 minutes" in first.content.decode()


def test_pages_keep_their_place_and_the_action_pages_through_the_selection(editor, three_pairs_two_groups_a_page):
    response = act(editor, "find_duplicates", *Article.objects.all())
    second = editor.get(reverse(DUPLICATES), {"threshold": "0.99", "page": "2"})
    (group,) = second.context["groups"]
    a, b, _ = group.pairs[0]
    assert '<input type="hidden" name="page" value="2">' in second.content.decode()
    dismissed = editor.post(reverse(DISMISS), {"first": a.pk, "second": b.pk, "threshold": "0.99", "page": "2"})
    assert dismissed["Location"] == reverse(DUPLICATES) + "?threshold=0.99&page=2"
    # The selection's page is reached by GET, so its groups page like the whole table's.
    assert len(response.context["groups"]) == 2
    assert "Page 1 of 2 (3 groups)" in response.content.decode()
    token = response.wsgi_request.GET["selection"]
    assert f"selection={token}&amp;page=2" in response.content.decode()


def test_duplicate_review_opens_no_extra_database_connections(viewer, fake_gemini, monkeypatch):
    """Over SPLIT_MIN_ROWS rows duplicates() searches over several connections at once; not in a request.

    The threshold is lowered to 100 rows for the test: over 5,000 rows the page took 40 s."""
    monkeypatch.setattr(duplicates, "SPLIT_MIN_ROWS", 100)
    cache.clear()
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"embedded row {i // 2}") for i in range(20))
    embed_pending()
    field = get_embedding_field(Article)
    columns = [
        f.column for f in Article._meta.concrete_fields if not f.primary_key and not getattr(f, "generated", False)
    ]
    # Copies of the embedded rows, their vectors moved a little at random: searchable, and far cheaper
    # than embedding 5,000 rows (identical vectors would make the index search slow).
    noise = f"(SELECT array_agg(random() * 0.1) FROM generate_series(1, {field.dimensions} + 0 * copy))::vector"
    values = [f"{column} + {noise}" if column == field.column else column for column in columns]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Article._meta.db_table} ({', '.join(columns)}) "
            f"SELECT {', '.join(values)} FROM {Article._meta.db_table}, generate_series(1, %s) copy",
            [duplicates.SPLIT_MIN_ROWS // 20],
        )
    assert Article.objects.filter(field.searchable()).count() > duplicates.SPLIT_MIN_ROWS
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(connection.alias)

    connection_created.connect(count)
    try:
        response = viewer.get(reverse(DUPLICATES))
    finally:
        connection_created.disconnect(count)
    assert response.status_code == 200 and response.context["groups"]
    assert opened == []


def test_marking_not_a_duplicate_hides_the_pair(editor, articles):
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    response = editor.post(reverse(DISMISS), {"first": b.pk, "second": a.pk, "threshold": "0.5"}, follow=True)
    assert "as not duplicates" in response.content.decode()
    assert DismissedPair.objects.get().first_pk == str(min(a.pk, b.pk))
    titles = [{x.title for x in group.rows} for group in response.context["groups"]]
    assert {a.title, b.title} not in titles


def test_dismiss_refusals(editor, articles, client):
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    hidden = articles["reset account password secret"]
    assert editor.post(reverse(DISMISS), {"first": a.pk, "second": 999999}).status_code == 404
    assert editor.post(reverse(DISMISS), {"first": a.pk, "second": hidden.pk}).status_code == 404
    assert editor.post(reverse(DISMISS), {"first": a.pk, "second": "x"}).status_code == 404
    assert editor.post(reverse(DISMISS), {"first": a.pk, "second": a.pk}).status_code == 404  # as compare answers
    got = editor.get(reverse(DISMISS), {"first": a.pk, "second": b.pk})
    assert got.status_code == 405 and got["Allow"] == "POST"
    client.force_login(staff("looker", "view_article"))
    assert client.post(reverse(DISMISS), {"first": a.pk, "second": b.pk}).status_code == 403
    assert not DismissedPair.objects.exists()


def test_pages_refuse_users_without_view_permission(client, articles):
    client.force_login(staff("nobody"))
    assert client.get(reverse(DUPLICATES)).status_code == 403
    assert client.get(reverse("admin:semantic_status")).status_code == 403


def test_the_semantic_permission_hooks_switch_off_every_semantic_feature_of_the_list(editor, articles, monkeypatch):
    """has_semantic_view_permission() / has_semantic_change_permission() refusing: no link to a page
    that would answer 403, no search or column by meaning, no suggested labels, no retry of its rows."""
    from tests.urls import other_site

    for model_admin in (admin.site._registry[Article], other_site._registry[Article]):
        monkeypatch.setattr(model_admin, "has_semantic_view_permission", lambda request: False)
        monkeypatch.setattr(model_admin, "has_semantic_change_permission", lambda request: False)
    listed = editor.get(reverse(CHANGELIST))
    page = listed.content.decode()
    assert "Review duplicates" not in page and ">Topics<" not in page and "semantic-toggle" not in page
    assert "find_similar" not in page and "reembed" not in page
    searched = editor.get(reverse(CHANGELIST), {"q": "password", "semantic": "1"})
    assert "similarity" not in [h["text"] for h in searched.context["result_headers"]]
    assert {a.title for a in searched.context["cl"].result_list} == {
        t for t in articles if "password" in t and "secret" not in t
    }  # Django's keyword search
    labelled = editor.get(reverse("myadmin:testapp_article_changelist"))
    assert "suggested label" not in [h["text"] for h in labelled.context["result_headers"]]

    Article.objects.filter(pk=articles["export invoices as csv"].pk).update(embedding=None)
    failed(articles["export invoices as csv"])
    retried = editor.post(reverse("admin:semantic_status"), follow=True)
    assert [str(m) for m in retried.context["messages"]][0] == "Queued 0 failed rows again."
    assert EmbeddingFailure.objects.get().permanent


def test_change_form_shows_similar_items(viewer, articles):
    obj = articles["reset my account password"]
    response = viewer.get(reverse("admin:testapp_article_change", args=[obj.pk]))
    assert [x.title for x in response.context["semantic_similar"]][0] == "reset the password of my account"
    assert "Similar items" in response.content.decode()


def test_saving_a_row_waiting_for_the_worker_never_calls_the_api(editor, articles, fake_gemini, semantic_settings):
    """The panel searches with stored, current vectors only: a save (and the form after it) of a
    row whose new text waits for the worker says so, and never waits on the API or warns of it."""
    semantic_settings(SYNC=False)  # no worker runs: saved rows stay pending
    fake_gemini.fail_every(503, body=api_error(503, "The model is overloaded.", "UNAVAILABLE"))
    obj = articles["reset my account password"]
    url = reverse("admin:testapp_article_change", args=[obj.pk])
    for title in ("reset my account password now", "reset my account password today"):
        saved = editor.post(url, {"title": title, "body": "", "category": "", "_continue": "1"}, follow=True)
        assert saved.status_code == 200 and saved.redirect_chain == [(url, 302)]
        assert [str(m) for m in get_messages(saved.wsgi_request)] == [
            f'The article “<a href="{url}">{title}</a>” was changed successfully. You may edit it again below.'
        ]
        assert saved.context["semantic_similar"] is None and saved.context["semantic_state"] == "pending"
        assert "Waiting for the worker to embed this row’s current text" in saved.content.decode()
    assert fake_gemini.request_count == 0
    assert Article.objects.get(pk=obj.pk).title == "reset my account password today"


def link_texts(response, pk):
    """The texts of the page's links to one row's change form."""
    url = reverse("admin:testapp_article_change", args=[pk])
    return re.findall(rf'<a [^>]*href="{re.escape(url)}"[^>]*>(.*?)</a>', response.content.decode(), re.S)


def test_a_row_whose_str_is_empty_is_linked_as_the_changelist_shows_it(editor, articles):
    """Django's changelist shows the ModelAdmin's empty value ("-") for it; so does every page the app adds."""
    with suspend_embedding():
        blank = Article.objects.create(title="", body="reset my account password")
    embed_pending()
    near = articles["reset my account password"]
    empty = admin.site._registry[Article].get_empty_value_display()
    assert link_texts(editor.get(reverse(CHANGELIST)), blank.pk) == [empty]

    form = editor.get(reverse("admin:testapp_article_change", args=[near.pk]))
    assert blank in form.context["semantic_similar"] and link_texts(form, blank.pk) == [empty]
    similar = act(editor, "find_similar", blank, near)
    assert link_texts(similar, blank.pk) == [empty, empty]  # its own heading, and near's neighbour
    review = editor.get(reverse(DUPLICATES), {"threshold": "0.5"})
    assert link_texts(review, blank.pk) and set(link_texts(review, blank.pk)) == {empty}
    compare = editor.get(reverse(COMPARE), {"first": blank.pk, "second": near.pk})
    assert link_texts(compare, blank.pk)[0] == empty  # then its "Edit" link
    two = {"id__in": f"{blank.pk},{near.pk}", "semantic_groups": "1"}
    topics = editor.get(reverse("admin:testapp_article_topics"), two)
    assert link_texts(topics, blank.pk) == [empty]


SCROLLING = '<div class="results semantic-scroll">'


def test_every_table_the_app_adds_scrolls_inside_its_own_box(editor, articles):
    """At phone width a wide table scrolls in a box, as Django's changelist keeps its table in
    ``div.results`` (changelists.css: ``overflow-x: auto``), instead of the whole page."""
    a, b = articles["reset my account password"], articles["reset the password of my account"]
    pages = {
        "status": editor.get(reverse("admin:semantic_status")),
        "duplicates": editor.get(reverse(DUPLICATES), {"threshold": "0.5"}),
        "topics": editor.get(reverse("admin:testapp_article_topics"), {"semantic_groups": "2"}),
        "find similar": act(editor, "find_similar", a),
        "compare": editor.get(reverse(COMPARE), {"first": a.pk, "second": b.pk}),
    }
    for name, response in pages.items():
        page = response.content.decode().split('id="content-main"', 1)[1]  # not the admin's navigation sidebar
        tables = re.findall(r"(.{%d})<table" % len(SCROLLING), page, re.S)
        assert tables and all(before == SCROLLING for before in tables), name
        assert page.count("<table") == page.count(SCROLLING), name


def test_text_keys_link_to_their_own_rows_and_keep_the_similar_panel(client, fake_gemini):
    """Django quotes keys in admin URLs ("_40" is "@" unquoted): "item_40" is "item_5F40" there."""
    viewer = client
    viewer.force_login(staff("entries", "view_entry"))
    Entry.objects.bulk_create(
        [Entry(code="item_22", text="reset my account password"), Entry(code="item_40", text="reset my password")]
    )
    embed_pending()
    first, second = Entry.objects.get(pk="item_22"), Entry.objects.get(pk="item_40")
    changelist = reverse("admin:testapp_entry_changelist")

    similar = viewer.post(changelist, {"action": "find_similar", "index": 0, "_selected_action": [first.pk]})
    links = set(re.findall(r'href="(/admin/testapp/entry/[^"]*/change/)"', similar.content.decode()))
    assert links == {reverse("admin:testapp_entry_change", args=[quote(pk)]) for pk in (first.pk, second.pk)}
    for link in links:
        assert viewer.get(link).context["original"] in (first, second)

    form = viewer.get(reverse("admin:testapp_entry_change", args=[quote(second.pk)]))
    assert form.context["original"] == second
    assert [x.pk for x in form.context["semantic_similar"]] == [first.pk]
    page = form.content.decode()
    assert "Similar items" in page
    assert f'href="{reverse("admin:testapp_entry_change", args=[quote(first.pk)])}"' in page


def test_search_by_meaning_never_fails_with_a_server_error(viewer, articles, fake_gemini):
    """Issue 11 item 5/6: the API failing, or a query with nothing to embed, is not a 500."""
    from django.core.cache import cache

    cache.clear()
    fake_gemini.fail_every(503, body=api_error(503, "The service is currently unavailable.", "UNAVAILABLE"))
    response = viewer.get(reverse(CHANGELIST), {"q": "a query never embedded before", "semantic": "1"})
    assert response.status_code == 200
    assert "Search by meaning is unavailable" in response.content.decode()
    response = viewer.get(reverse(CHANGELIST), {"q": "\x01", "semantic": "1"})
    assert response.status_code == 200
    stale = articles["reset my account password"]
    Article.objects.filter(pk=stale.pk).update(title="a text changed behind save")  # its vector is not current
    response = viewer.get(reverse("admin:testapp_article_change", args=[stale.pk]))
    assert response.status_code == 200 and response.context["semantic_similar"] is None
    fake_gemini.reset()


def test_search_by_meaning_orders_by_similarity(viewer, articles):
    response = viewer.get(reverse(CHANGELIST), {"q": "help with account password reset", "semantic": "1"})
    titles = [a.title for a in response.context["cl"].result_list]
    assert set(titles[:2]) == {"reset my account password", "reset the password of my account"}
    assert "reset account password secret" not in titles
    assert 'id="semantic-toggle" checked' in response.content.decode().replace("\n", "")
    plain = viewer.get(reverse(CHANGELIST), {"q": "help with account password reset"})
    assert [a.title for a in plain.context["cl"].result_list] == []  # every word must appear: none match


def test_search_by_meaning_ranks_the_rows_the_list_filters_keep(viewer, articles, monkeypatch):
    monkeypatch.setattr("semantic.admin_search.MEANING_RESULTS", 2)  # the table's 2 nearest are not billing rows
    Article.objects.filter(title__startswith="export").update(category="billing")
    response = viewer.get(reverse(CHANGELIST), {"q": MEANING_QUERY, "semantic": "1", "category": "billing"})
    assert {a.title for a in response.context["cl"].result_list} == {
        "export invoices as csv",
        "export all invoices to csv",
    }


# -- the changelist's search by meaning (issue 12) --------------------------------------------

MEANING_QUERY = "help with account password reset"
HREF = re.compile(r'href="(\?[^"]*)"')


@pytest.fixture
def paged(monkeypatch):
    """Two rows per changelist page, so a search by meaning has page links."""
    monkeypatch.setattr(admin.site._registry[Article], "list_per_page", 2)


def ranked_titles(response):
    rows = list(response.context["cl"].result_list)
    scores = [row.semantic_similarity for row in rows]
    assert scores == sorted(scores, reverse=True)
    return [row.title for row in rows]


def test_meaning_search_toggle_survives_filter_sort_and_page_links(viewer, articles, paged):
    response = viewer.get(reverse(CHANGELIST), {"q": MEANING_QUERY, "semantic": "1"})
    assert response.status_code == 200
    page = response.content.decode()
    links = [html.unescape(href) for href in HREF.findall(page)]
    assert any("embedding_state=" in link for link in links)  # a filter
    assert any("o=" in link for link in links)  # a sort header
    assert any("p=2" in link for link in links)  # a page
    assert links and all("semantic=1" in link for link in links), links
    # The toggle is the checkbox's, not a hidden field's: unticking it must turn it off.
    assert 'type="hidden" name="semantic"' not in page
    first_page = ranked_titles(response)
    second = viewer.get(reverse(CHANGELIST), {"q": MEANING_QUERY, "semantic": "1", "p": "2"})
    assert len(first_page) == 2 and set(first_page).isdisjoint(ranked_titles(second))

    filtered = viewer.get(reverse(CHANGELIST), {"q": MEANING_QUERY, "semantic": "1", "embedding_state": "embedded"})
    assert filtered.status_code == 200  # not redirected to ?e=1 as an unknown field lookup
    assert ranked_titles(filtered) == first_page
    assert 'id="semantic-toggle" checked' in filtered.content.decode()
    assert filtered.context["cl"].result_count == response.context["cl"].result_count == 4
    # Django's facet counts ("Show counts") count the rows found by meaning, not every row.
    with suspend_embedding():
        Article.objects.create(title="reset password, not embedded yet")
    counted = viewer.get(reverse(CHANGELIST), {"q": MEANING_QUERY, "semantic": "1", "_facets": ""})
    assert ranked_titles(counted) == first_page
    assert ">embedded (4)</a>" in counted.content.decode() and ">pending (0)</a>" in counted.content.decode()


def test_meaning_results_show_similarity_and_rank_above_the_default_ordering(admin_client, fake_gemini):
    """Question is ordered by -created and lists "created": ranked results must not look sorted by date."""
    cache.clear()
    Question.objects.bulk_create(
        Question(title=title, body="")
        for title in ("reset my account password", "export invoices as csv", "reset the password of my account")
    )
    embed_pending()
    url = reverse("admin:questions_question_changelist")
    response = admin_client.get(url, {"q": MEANING_QUERY, "semantic": "1"})
    headers = response.context["result_headers"]
    assert [h["text"] for h in headers if h.get("sorted")] == ["similarity"]
    assert not next(h for h in headers if h["text"] == "similarity")["ascending"]
    titles = ranked_titles(response)
    assert set(titles[:2]) == {"reset my account password", "reset the password of my account"}
    page = response.content.decode()
    best = response.context["cl"].result_list[0].semantic_similarity
    assert f'<span class="semantic-score">{floatformat(best, 3)}</span>' in page  # as the other pages round
    assert f'<meter class="semantic-bar" min="0" max="1" value="{best:.3f}"' in page  # the bar
    with translation.override("de"):  # the score as the page's language writes it; the attribute as HTML does
        german = admin_client.get(url, {"q": MEANING_QUERY, "semantic": "1"}).content.decode()
    assert f'<span class="semantic-score">{floatformat(best, 3)}</span>'.replace(".", ",") in german
    assert f'<meter class="semantic-bar" min="0" max="1" value="{best:.3f}"' in german

    # A sort header sorts the same rows by its column, the similarity breaking ties; the toggle stays.
    columns = response.context["cl"].list_display
    by_title = admin_client.get(url, {"q": MEANING_QUERY, "semantic": "1", "o": str(columns.index("title"))})
    assert [q.title for q in by_title.context["cl"].result_list] == sorted(titles)
    assert [h["text"] for h in by_title.context["result_headers"] if h.get("sorted")] == ["title"]
    least_first = admin_client.get(
        url, {"q": MEANING_QUERY, "semantic": "1", "o": str(columns.index("search_similarity"))}
    )
    assert [q.title for q in least_first.context["cl"].result_list] == titles[::-1]
    # "Remove from sorting" on the similarity column (an empty sort) leaves the default ordering.
    unsorted = list(admin_client.get(url, {"q": MEANING_QUERY, "semantic": "1", "o": ""}).context["cl"].result_list)
    assert unsorted == sorted(unsorted, key=lambda q: (q.created, q.pk), reverse=True)
    assert [q.title for q in unsorted] != titles

    # A keyword search has no similarity column, and a date sort looks like one again.
    plain = admin_client.get(url, {"q": "password"})
    assert "similarity" not in [h["text"] for h in plain.context["result_headers"]]
    assert [h["text"] for h in plain.context["result_headers"] if h.get("sorted")] == ["created"]


def test_sorting_by_similarity_when_the_search_could_not_rank(viewer, articles):
    """The similarity column is there but the text had nothing to embed: a keyword search, not a 500."""
    search = {"q": "\x01", "semantic": "1"}
    columns = viewer.get(reverse(CHANGELIST), search).context["cl"].list_display
    response = viewer.get(reverse(CHANGELIST), {**search, "o": columns.index("search_similarity")})
    assert response.status_code == 200 and list(response.context["cl"].result_list) == []


def test_keyword_search_counts_results_like_django(viewer, articles):
    with suspend_embedding():
        Article.objects.create(title="not embedded, so never found by meaning")
    page = viewer.get(reverse(CHANGELIST), {"q": "password"}).content.decode()
    assert "2 results (" in page and '<a href="?">5 total</a>' in page
    ranked = viewer.get(reverse(CHANGELIST), {"q": MEANING_QUERY, "semantic": "1"}).content.decode()
    assert "4 results (" in ranked and '<a href="?semantic=1">5 total</a>' in ranked


@pytest.fixture
def meaning_only(monkeypatch):
    """ArticleAdmin without search_fields: its search box searches by meaning only."""
    monkeypatch.setattr(admin.site._registry[Article], "search_fields", ())


def test_a_box_without_search_fields_says_it_searches_by_meaning(viewer, articles, meaning_only, fake_gemini):
    response = viewer.get(reverse(CHANGELIST))
    page = response.content.decode()
    assert 'placeholder="Search by meaning"' in page and 'id="semantic-toggle"' not in page
    searched = viewer.get(reverse(CHANGELIST), {"q": "export invoices to a spreadsheet"})
    titles = ranked_titles(searched)
    assert set(titles[:2]) == {"export invoices as csv", "export all invoices to csv"}
    assert searched.context["cl"].result_list[0].semantic_similarity > 0

    # Never every row as if all matched: nothing to embed, or the API down, shows none and says why.
    nothing = viewer.get(reverse(CHANGELIST), {"q": "\x01"})
    assert nothing.context["cl"].result_count == 0
    assert "Nothing to search by meaning" in nothing.content.decode()
    cache.clear()
    fake_gemini.fail_every(503, body=api_error(503, "The service is currently unavailable.", "UNAVAILABLE"))
    down = viewer.get(reverse(CHANGELIST), {"q": "a query never embedded before"})
    assert down.status_code == 200 and down.context["cl"].result_count == 0
    assert "Search by meaning is unavailable right now" in down.content.decode()


def test_status_page_counts_errors_and_never_shows_the_key(editor, articles, fake_gemini, settings):
    fake_gemini.fail_next(400, body='{"error": {"code": 400, "message": "key %s rejected"}}' % settings.TEST_API_KEY)
    Article.objects.create(title="will fail")
    response = editor.get(reverse("admin:semantic_status"))
    page = response.content.decode()
    row = next(r for r in response.context["report"] if r["model"] == "testapp.Article")
    assert (row["total"], row["embedded"], row["failed"]) == (5, 4, 1)  # not the Article ArticleAdmin hides
    assert "rejected" in page and settings.TEST_API_KEY not in page
    response = editor.post(reverse("admin:semantic_status"), follow=True)
    assert "Queued 1 failed row again." in response.content.decode()
    assert not EmbeddingFailure.objects.exists()


def test_changelist_links_to_the_status_page_for_users_who_may_open_it(editor, articles, client):
    page = editor.get(reverse(CHANGELIST)).content.decode()
    assert f'href="{reverse("admin:semantic_status")}" class="semantic-status-link"' in page
    client.force_login(staff("articles only", "view_article"))
    assert "semantic-status-link" not in client.get(reverse(CHANGELIST)).content.decode()


def test_status_counts_open_the_changelist_filtered_to_those_rows(editor, articles, fake_gemini):
    fake_gemini.reject_marker = "REJECT"
    Article.objects.create(title="REJECT this one")
    with suspend_embedding():
        Article.objects.create(title="waiting")
    response = editor.get(reverse("admin:semantic_status"))
    row = next(r for r in response.context["report"] if r["model"] == "testapp.Article")
    assert (row["embedded"], row["pending"], row["failed"]) == (4, 1, 1)
    page = response.content.decode()
    for state in ("embedded", "pending", "failed", "stale"):
        url = f"{reverse(CHANGELIST)}?embedding_state={state}"
        named = f'<span class="visually-hidden"> {state}, testapp.Article.embedding</span>'  # not a bare number
        assert f'<a href="{url}">{row[state]}{named}</a>' in page
        assert editor.get(url).context["cl"].result_count == row[state]
    named = '<span class="visually-hidden"> Total, testapp.Article.embedding</span>'
    assert f'<a href="{reverse(CHANGELIST)}">{row["total"]}{named}</a>' in page


def test_status_counts_of_a_model_without_a_semantic_changelist_are_not_links(admin_client, articles, monkeypatch):
    """Note has no ModelAdmin on the default site: its rows have no changelist there to open."""

    def linked_rows():
        page = admin_client.get(reverse("admin:semantic_status")).content.decode()
        rows = re.findall(r'<tr><th scope="row">(testapp\.\w+)\.<wbr>(\w+)</th>(.*?)</tr>', page, re.S)
        assert ("testapp.Note", "embedding") in {(model, field) for model, field, _ in rows}
        return {f"{model}.{field}" for model, field, cells in rows if "<a " in cells}

    assert linked_rows() == {"testapp.Article.embedding", "testapp.Entry.embedding", "testapp.Report.embedding"}
    # Nor does a changelist whose ModelAdmin took the embedding filter away.
    monkeypatch.setattr(admin.site._registry[Article], "get_list_filter", lambda request: [])
    assert linked_rows() == {"testapp.Entry.embedding", "testapp.Report.embedding"}


def test_status_page_reports_to_staff_only_models_its_own_site_registers(client, articles, fake_gemini):
    """tests/urls.py's "plainadmin" registers Note alone: under its prefix, Article's rows (of
    which ArticleAdmin on admin.site hides some) are not counted, listed or retried for a staff
    user holding Article's permissions; nor are Note's on admin.site, which has no ModelAdmin for it."""
    fake_gemini.reject_marker = "REJECT"
    hidden = Article.objects.create(title="REJECT hidden", category="hidden")
    Note.objects.create(text="REJECT note")
    fake_gemini.reject_marker = None
    plain = reverse("plainadmin:testapp_note_semantic_status")
    perms = ("view_embeddingfailure", "change_embeddingfailure", "change_article", "change_note")
    client.force_login(staff("staff", *perms))
    page = client.get(plain)
    assert [row["model"] for row in page.context["report"]] == ["testapp.Note"]
    assert [f.model_label for f in page.context["errors"]] == ["testapp.Note"]
    on_admin = client.get(reverse("admin:semantic_status"))
    assert "testapp.Note" not in {row["model"] for row in on_admin.context["report"]}
    assert on_admin.context["errors"] == []  # ArticleAdmin hides category "hidden"
    retried = client.post(plain, follow=True)
    assert [str(m) for m in retried.context["messages"]] == ["Queued 1 failed row again."]  # Note's
    assert list(EmbeddingFailure.objects.values_list("model_label", "object_pk", "permanent")) == [
        ("testapp.Article", str(hidden.pk), True)
    ]
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    assert {"testapp.Article", "testapp.Note"} <= {row["model"] for row in client.get(plain).context["report"]}


def test_a_model_whose_semantic_view_permission_refuses_is_not_on_the_status_page(editor, articles, monkeypatch):
    """has_semantic_view_permission() refusing takes the model off the status page (counts,
    errors, retry) and off the lists of its failure records and "not a duplicate" pairs."""
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    failed(a)
    first, second = DismissedPair.ordered(a.pk, b.pk)
    DismissedPair.objects.create(
        model_label="testapp.Article", field_name="embedding", first_pk=first, second_pk=second
    )
    User.objects.get(username="editor").user_permissions.add(Permission.objects.get(codename="view_dismissedpair"))
    status = reverse("admin:semantic_status")
    assert "testapp.Article" in {row["model"] for row in editor.get(status).context["report"]}
    monkeypatch.setattr(admin.site._registry[Article], "has_semantic_view_permission", lambda request: False)
    page = editor.get(status)
    assert "testapp.Article" not in {row["model"] for row in page.context["report"]}
    assert page.context["errors"] == []
    for url in ("admin:semantic_embeddingfailure_changelist", "admin:semantic_dismissedpair_changelist"):
        assert list(editor.get(reverse(url)).context["cl"].result_list) == []
    retried = editor.post(status, follow=True)
    assert [str(m) for m in retried.context["messages"]] == ["Queued 0 failed rows again."]
    assert EmbeddingFailure.objects.get().permanent


class SuperuserOnlyFailureAdmin(EmbeddingFailureAdmin):
    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser


def test_a_site_that_registers_a_failure_admin_serves_the_status_page_only_through_it(editor, articles, settings):
    """A stricter EmbeddingFailureAdmin holds at the model's own status URL too: that URL is for
    sites with none (404 here, as on admin.site, whose page is beside the failures)."""
    site = admin.AdminSite(name="strictadmin")
    site.register(Article, ArticleAdmin)
    site.register(EmbeddingFailure, SuperuserOnlyFailureAdmin)
    urlconf = ModuleType("strictadmin_urls")
    urlconf.urlpatterns = [path("strictadmin/", site.urls)]
    settings.ROOT_URLCONF = urlconf
    failed(articles["export invoices as csv"])
    assert editor.get(reverse("strictadmin:semantic_status")).status_code == 403
    assert "semantic-status-link" not in editor.get(reverse("strictadmin:testapp_article_changelist")).content.decode()
    beside_the_model = reverse("strictadmin:testapp_article_semantic_status")
    assert editor.get(beside_the_model).status_code == 404
    assert editor.post(beside_the_model).status_code == 404
    assert EmbeddingFailure.objects.get().permanent  # not retried
    settings.ROOT_URLCONF = "tests.urls"
    assert editor.get(reverse("admin:testapp_article_semantic_status")).status_code == 404
    assert editor.get(reverse("admin:semantic_status")).status_code == 200


def test_failure_records_go_with_their_rows_however_the_rows_are_deleted(admin_client, fake_gemini):
    """A text the API refused is often junk that is then deleted: its record must not stay
    listed, and retried ("Skipped 1 failed row") on every press of the status page's button."""
    fake_gemini.reject_marker = "REJECT"
    in_admin, raw, swept = (Article.objects.create(title=f"REJECT {name}") for name in ("admin", "raw", "swept"))
    records = EmbeddingFailure.objects.filter(model_label="testapp.Article")
    assert sorted(records.values_list("object_pk", flat=True)) == sorted(str(a.pk) for a in (in_admin, raw, swept))

    deleted = admin_client.post(
        reverse("admin:testapp_article_delete", args=[in_admin.pk]), {"post": "yes"}, follow=True
    )
    assert deleted.redirect_chain == [(reverse(CHANGELIST), 302)]
    assert not records.filter(object_pk=str(in_admin.pk)).exists()
    selected = Article.objects.create(title="REJECT selected")
    assert records.filter(object_pk=str(selected.pk)).exists()
    admin_client.post(
        reverse(CHANGELIST),
        {"action": "delete_selected", "_selected_action": [selected.pk], "post": "yes"},
        follow=True,
    )
    assert not Article.objects.filter(pk=selected.pk).exists()
    assert not records.filter(object_pk=str(selected.pk)).exists()

    with connection.cursor() as cursor:  # behind the ORM's back
        cursor.execute(f"DELETE FROM {Article._meta.db_table} WHERE id IN (%s, %s)", [raw.pk, swept.pk])
    status = reverse("admin:semantic_status")
    assert records.count() == 2  # until the button or the sweep finds them gone
    retried = admin_client.post(status, follow=True)
    assert [str(m) for m in retried.context["messages"]] == [
        "Queued 0 failed rows again.",
        "Removed 2 failure records of rows deleted since.",
    ]
    assert not records.exists()
    again = admin_client.post(status, follow=True)
    assert [str(m) for m in again.context["messages"]] == ["Queued 0 failed rows again."]

    gone = Article.objects.create(title="REJECT gone behind the ORM")
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {Article._meta.db_table} WHERE id = %s", [gone.pk])
    assert embed_pending(Article)["testapp.Article.embedding"]["failures_swept"] == 1
    assert not records.exists()

    dropped = Article.objects.create(title="REJECT dropped behind the ORM")
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {Article._meta.db_table} WHERE id = %s", [dropped.pk])
    assert records.count() == 1
    out = io.StringIO()
    call_command("semantic_embed", "testapp.Article", "--failed", stdout=out)
    assert not records.exists()  # semantic_embed --failed drops them too, and says so
    assert Command.ORPHANS_DROPPED.format(label="testapp.Article.embedding", records=1) in out.getvalue()

    report = Report.objects.create(title="report", body="REJECT this report")
    EmbeddingFailure.objects.create(
        model_label="testapp.Report", field_name="embedding:passages", object_pk=str(report.pk), error="refused"
    )
    assert EmbeddingFailure.objects.filter(object_pk=str(report.pk)).count() == 2  # its vector's and its passages'
    report.delete()
    assert not EmbeddingFailure.objects.filter(object_pk=str(report.pk)).exists()


def test_the_failures_list_shows_only_records_of_rows_the_user_may_see(viewer, fake_gemini):
    """As the status page beside it: ArticleAdmin's get_queryset() hides category "hidden",
    and the viewer may not view Questions at all."""
    fake_gemini.reject_marker = "REJECT"
    shown = Article.objects.create(title="REJECT shown")
    hidden = Article.objects.create(title="REJECT hidden", category="hidden")
    question = Question.objects.create(title="REJECT question", body="")
    EmbeddingFailure.objects.create(model_label="gone.Model", field_name="embedding", object_pk="1", error="x")
    assert EmbeddingFailure.objects.count() == 4
    record = {(r.model_label, r.object_pk): r.pk for r in EmbeddingFailure.objects.all()}

    listed = viewer.get(reverse("admin:semantic_embeddingfailure_changelist"))
    assert listed.status_code == 200
    # A record of a model since removed shows no one's row, and this list is where it can be deleted.
    assert {(r.model_label, r.object_pk) for r in listed.context["cl"].result_list} == {
        ("testapp.Article", str(shown.pk)),
        ("gone.Model", "1"),
    }
    status = viewer.get(reverse("admin:semantic_status"))
    assert [f.object_pk for f in status.context["errors"]] == [str(shown.pk)]
    change = "admin:semantic_embeddingfailure_change"
    assert viewer.get(reverse(change, args=[record["testapp.Article", str(shown.pk)]])).status_code == 200
    for other in (hidden, question):
        page = viewer.get(reverse(change, args=[record[other._meta.label, str(other.pk)]]))
        assert page.status_code == 302 and "REJECT" not in page.content.decode()


def test_status_page_shows_the_spec_readably(editor, articles):
    response = editor.get(reverse("admin:semantic_status"))
    row = next(r for r in response.context["report"] if r["model"] == "testapp.Article")
    page = response.content.decode()
    assert row["spec"] not in page
    backend, model = row["spec"].split("|")[0].split(":", 1)
    assert (row["backend"], row["embedding_model"]) == (backend, model)
    cell = f'<td class="semantic-spec">{model} ({backend})<br>SEMANTIC_SIMILARITY, 128 dimensions</td>'
    assert cell in page
    assert '<th scope="col">Embedded with</th></tr>' in page


def test_status_retry_needs_change_permission(viewer, articles):
    assert viewer.post(reverse("admin:semantic_status")).status_code == 403


def test_batch_jobs_are_listed_read_only(admin_client):
    job = EmbeddingBatchJob.objects.create(
        name="batches/listed-1",
        model_label="testapp.Article",
        field_name="embedding",
        spec="gemini:gemini-embedding-001|SEMANTIC_SIMILARITY|128",
        rows=2,
        first_pk="1",
        last_pk="2",
        items=[["1", "a" * 32], ["2", "b" * 32]],
    )
    page = admin_client.get(reverse("admin:semantic_embeddingbatchjob_changelist")).content.decode()
    assert "batches/listed-1" in page and "JOB_STATE_PENDING" in page
    detail = admin_client.get(reverse("admin:semantic_embeddingbatchjob_change", args=[job.pk]))
    assert detail.status_code == 200 and "a" * 32 not in detail.content.decode()
    assert admin_client.get(reverse("admin:semantic_embeddingbatchjob_add")).status_code == 403


def test_status_page_shows_how_long_the_oldest_row_waited(editor, articles):
    with suspend_embedding():
        Article.objects.create(title="waiting for its vector")
    Article.objects.filter(title="waiting for its vector").update(
        embedding_pending_since=timezone.now() - timedelta(hours=3)
    )
    page = editor.get(reverse("admin:semantic_status")).content.decode()
    assert "Oldest pending" in page and ">3\xa0hours<" in page


# -- a custom AdminSite (tests/urls.py mounts one named "myadmin" at /myadmin/) -------------------

LINK = re.compile(r'(?:href|action)="(/[^"]*)"')


def assert_stays_on_other_site(response, prefix="/myadmin/"):
    """Every link and form of the page leads into /myadmin/ (or to the site itself, or static files)."""
    assert response.status_code == 200
    assert response.request["PATH_INFO"].startswith(prefix)
    elsewhere = {url for url in LINK.findall(response.content.decode()) if not url.startswith((prefix, "/static/"))}
    assert elsewhere <= {"/"}, elsewhere


@pytest.fixture
def notes(fake_gemini):
    cache.clear()
    Note.objects.bulk_create(
        [Note(text="reset my account password"), Note(text="reset the password of my account"), Note(text="dark mode")]
    )
    embed_pending()
    fake_gemini.reset()
    return {n.text: n for n in Note.objects.all()}


def test_every_semantic_page_and_action_on_a_custom_admin_site(client, notes, fake_gemini):
    client.force_login(staff("other", "view_note", "change_note", "view_embeddingfailure", "change_embeddingfailure"))
    first, second = notes["reset my account password"], notes["reset the password of my account"]
    changelist = reverse("myadmin:testapp_note_changelist")
    duplicates = reverse("myadmin:testapp_note_duplicates")
    status = reverse("myadmin:semantic_status")

    page = client.get(changelist)
    assert_stays_on_other_site(page)
    assert f'href="{duplicates}"' in page.content.decode()
    assert f'href="{status}" class="semantic-status-link"' in page.content.decode()
    searched = client.get(changelist, {"q": "account password reset", "semantic": "1"})
    assert_stays_on_other_site(searched)
    assert {n.text for n in searched.context["cl"].result_list[:2]} == {first.text, second.text}

    form = client.get(reverse("myadmin:testapp_note_change", args=[first.pk]))
    assert_stays_on_other_site(form)
    assert [n.text for n in form.context["semantic_similar"]][0] == second.text

    def act(action, *objs):
        data = {"action": action, "index": 0, "_selected_action": [o.pk for o in objs]}
        return client.post(changelist, data, follow=True)

    similar = act("find_similar", first)
    assert_stays_on_other_site(similar)
    assert reverse("myadmin:testapp_note_change", args=[second.pk]) in similar.content.decode()
    found = act("find_duplicates", first, second)
    assert_stays_on_other_site(found)
    assert [set(group.rows) for group in found.context["groups"]] == [{first, second}]
    requeued = act("reembed", first)
    assert_stays_on_other_site(requeued)
    assert "Queued 1 row for embedding." in requeued.content.decode()

    review = client.get(duplicates, {"threshold": "0.5"})
    assert_stays_on_other_site(review)
    assert [set(group.rows) for group in review.context["groups"]] == [{first, second}]
    compared = client.get(reverse("myadmin:testapp_note_compare_duplicates"), {"first": first.pk, "second": second.pk})
    assert_stays_on_other_site(compared)
    assert reverse("myadmin:testapp_note_change", args=[second.pk]) in compared.content.decode()
    dismissed = client.post(
        reverse("myadmin:testapp_note_dismiss_duplicate"),
        {"first": first.pk, "second": second.pk, "threshold": "0.5"},
        follow=True,
    )
    assert dismissed.redirect_chain == [(f"{duplicates}?threshold=0.5", 302)]
    assert_stays_on_other_site(dismissed)
    assert dismissed.context["groups"] == []

    fake_gemini.reject_marker = "REJECT"
    Note.objects.create(text="REJECT this one")
    assert_stays_on_other_site(client.get(reverse("myadmin:semantic_embeddingfailure_changelist")))
    status_page = client.get(status)
    assert_stays_on_other_site(status_page)
    assert f'href="{changelist}?embedding_state=failed">1<span' in status_page.content.decode()
    retried = client.post(status, follow=True)
    assert retried.redirect_chain == [(status, 302)]
    assert_stays_on_other_site(retried)
    assert "Queued 1 failed row again." in retried.content.decode()


def test_a_custom_site_with_only_the_models_admin_has_the_status_page(client, notes, fake_gemini):
    """tests/urls.py's "plainadmin" registers Note alone: the mixin serves the page itself."""
    client.force_login(staff("plain", "view_note", "change_note", "view_embeddingfailure", "change_embeddingfailure"))
    changelist = reverse("plainadmin:testapp_note_changelist")
    status = reverse("plainadmin:testapp_note_semantic_status")
    fake_gemini.reject_marker = "REJECT"
    Note.objects.create(text="REJECT this one")

    page = client.get(changelist)
    assert_stays_on_other_site(page, "/plainadmin/")
    assert f'href="{status}" class="semantic-status-link"' in page.content.decode()
    status_page = client.get(status)
    assert_stays_on_other_site(status_page, "/plainadmin/")
    assert f'href="{changelist}?embedding_state=failed">1<span' in status_page.content.decode()
    retried = client.post(status, follow=True)
    assert retried.redirect_chain == [(status, 302)]
    assert "Queued 1 failed row again." in retried.content.decode()

    # The page still needs the permission that opens it on admin.site.
    client.force_login(staff("notesonly", "view_note"))
    assert "semantic-status-link" not in client.get(changelist).content.decode()
    assert client.get(status).status_code == 403


class RequestInline(admin.TabularInline):
    model = Request
    extra = 1


class QueueAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """The mistake of putting the mixin on the page where the embedded rows are edited: Queue
    has no EmbeddingField, its Requests (an inline here) have one."""

    inlines = [RequestInline]


@pytest.fixture
def queue_site(settings):
    site = serve_admin_site(settings, "queueadmin", Queue, QueueAdmin)
    yield site
    site.unregister(Queue)


def test_the_mixin_on_a_model_without_an_embedding_field_is_a_check_error_not_a_server_error(
    admin_client, queue_site, fake_gemini
):
    (error,) = QueueAdmin(Queue, queue_site).check()
    assert error.id == "semantic.E010"
    assert error.msg == NO_FIELD.format(admin="QueueAdmin", label="topicapp.Queue")
    assert error.hint == NO_FIELD_HINT.format(admin="QueueAdmin")

    queue = Queue.objects.create(name="Billing")
    Request.objects.create(text="copy of my invoice", queue=queue)
    for view, args in [("changelist", []), ("change", [queue.pk]), ("history", [queue.pk]), ("delete", [queue.pk])]:
        response = admin_client.get(reverse(f"queueadmin:topicapp_queue_{view}", args=args))
        assert response.status_code == 200, view
    assert admin_client.get(reverse("queueadmin:topicapp_queue_changelist")).context["cl"].result_count == 1


# -- duplicate review: columns, compare, threshold on every page, dismissed pairs (issue 12) -------

COMPARE = "admin:testapp_article_compare_duplicates"
SECTION = re.compile(r'<section class="module semantic-group">(.*?)</section>', re.S)
CELL = re.compile(r"<t[hd][^>]*>(.*?)</t[hd]>", re.S)


def table(section, name):
    """The header texts and the rows' cell texts of one table of a group's section."""
    html = re.search(rf'<table class="{name}".*?</table>', section, re.S).group(0)
    head, body = html.split("</thead>")
    text = [re.sub(r"<[^>]+>", "", cell).strip() for cell in CELL.findall(head)]
    rows = [
        [re.sub(r"<[^>]+>", "", c).strip() for c in CELL.findall(r)] for r in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]
    return text, rows


def test_duplicate_groups_have_the_same_columns_links_and_a_useful_head(viewer, articles):
    Article.objects.create(title="export the invoices as csv files")
    embed_pending()
    response = viewer.get(reverse(DUPLICATES), {"threshold": "0.3"})
    page = response.content.decode()
    groups = response.context["groups"]
    sections = SECTION.findall(page)
    assert len(groups) == len(sections) >= 2
    headers = {tuple(table(section, "semantic-rows")[0]) for section in sections}
    assert headers == {("ID", "Article", "Similarity to the first", "Text", "Actions")}  # no date: Article has none
    for group, section in zip(groups, sections):
        low, high = f"{group.lowest:.2f}", f"{group.highest:.2f}"
        span = high if low == high else f"{low}–{high}"
        assert f"<h2>{group.size} similar rows, similarity {span}</h2>" in section
        _, rows = table(section, "semantic-rows")
        assert [row[0] for row in rows] == [str(obj.pk) for obj in group.shown_rows[:1]] + sorted(
            (str(obj.pk) for obj in group.shown_rows[1:]), key=[r[0] for r in rows].index
        )
        for obj in group.rows:
            assert reverse("admin:testapp_article_change", args=[obj.pk]) in section
            assert any(row[1] == obj.title and row[3].startswith(obj.title) for row in rows)
        assert rows[0][2] == "first"
    assert any(g.lowest < g.highest and g.size == 3 for g in groups)  # a range in some head
    pair = next(g for g in groups if g.size == 2)
    _, rows = table(sections[groups.index(pair)], "semantic-rows")
    assert rows[1][2] == f"{pair.pairs[0][2]:.3f}"  # two rows: similarity to the first is the pair's
    assert " items</h2>" not in page


def test_duplicate_rows_show_a_date_when_the_model_has_one(client, fake_gemini):
    from project.questions.models import Question

    cache.clear()
    Question.objects.bulk_create(
        [Question(title="reset my account password"), Question(title="reset the password of my account")]
    )
    embed_pending()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    response = client.get(reverse("admin:questions_question_duplicates"), {"threshold": "0.5"})
    (section,) = SECTION.findall(response.content.decode())
    headers, rows = table(section, "semantic-rows")
    assert headers == ["ID", "Question", "Similarity to the first", "Text", "Created", "Actions"]
    assert all(row[4] and row[4] != "–" for row in rows)


def test_compare_shows_both_rows_and_deletes_only_through_djangos_confirmation(admin_client, articles):
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    review = admin_client.get(reverse(DUPLICATES), {"threshold": "0.5"}).content.decode()
    link = f"{reverse(COMPARE)}?first={a.pk}&amp;second={b.pk}&amp;threshold=0.5"
    assert link in review or f"{reverse(COMPARE)}?first={b.pk}&amp;second={a.pk}&amp;threshold=0.5" in review
    response = admin_client.get(reverse(COMPARE), {"first": a.pk, "second": b.pk, "threshold": "0.5"})
    assert response.status_code == 200
    page = response.content.decode()
    assert a.title in page and b.title in page
    assert [(label, differs) for label, _, differs in response.context["lines"]] == [
        ("Title", True),
        ("Body", False),
        ("Category", False),
    ]
    for obj in (a, b):
        assert f'href="{reverse("admin:testapp_article_change", args=[obj.pk])}"' in page
    delete_b = re.search(r'class="semantic-keep-this deletelink" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert delete_b.startswith(reverse("admin:testapp_article_delete", args=[b.pk]) + "?")
    assert 'name="first"' in page and "Not a duplicate" in page
    # The link opens Django's own confirmation page; nothing is deleted until it is confirmed.
    confirm = admin_client.get(delete_b)
    assert confirm.status_code == 200 and "Are you sure" in confirm.content.decode()
    assert Article.objects.filter(pk=b.pk).exists()
    done = admin_client.post(delete_b, {"post": "yes"})
    assert not Article.objects.filter(pk=b.pk).exists()
    assert done["Location"] == reverse(DUPLICATES) + "?threshold=0.5"


def test_compare_shows_only_the_fields_the_modeladmin_shows(admin_client, articles, monkeypatch):
    """A field kept off the change form (an internal note, a cost price) stays off the compare page too."""
    model_admin = admin.site._registry[Article]
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    monkeypatch.setattr(model_admin, "exclude", ["category"])
    change_form = admin_client.get(reverse("admin:testapp_article_change", args=[a.pk])).content.decode()
    assert 'name="category"' not in change_form
    response = admin_client.get(reverse(COMPARE), {"first": a.pk, "second": b.pk})
    assert [label for label, _, _ in response.context["lines"]] == ["Title", "Body"]

    @admin.display(description="words")
    def words(obj):
        return len(obj.title.split())

    monkeypatch.setattr(model_admin, "exclude", None)
    monkeypatch.setattr(model_admin, "fields", ["category", "title", words])
    monkeypatch.setattr(model_admin, "readonly_fields", [words])
    response = admin_client.get(reverse(COMPARE), {"first": a.pk, "second": b.pk})
    assert [(label, [str(v) for v in values], differs) for label, values, differs in response.context["lines"]] == [
        ("Category", ["-", "-"], False),
        ("Title", [a.title, b.title], True),
        ("Words", ["4", "5"], True),
    ]


def test_duplicate_review_excerpts_only_the_text_the_change_form_shows(editor, articles, monkeypatch):
    """The excerpt is of the embedded text, but a source field kept off the form stays off it."""
    a = articles["export invoices as csv"]
    Article.objects.filter(pk=a.pk).update(body="payroll cuts")
    model_admin = admin.site._registry[Article]
    monkeypatch.setattr(model_admin, "get_exclude", lambda request, obj=None: ["body"])
    assert "payroll" not in editor.get(reverse("admin:testapp_article_change", args=[a.pk])).content.decode()
    review = editor.get(reverse(DUPLICATES), {"threshold": "0.3"})
    (row,) = [row for _, rows in review.context["group_tables"] for row in rows if row.obj.pk == a.pk]
    assert row.excerpt == a.title
    assert "payroll" not in review.content.decode()
    monkeypatch.setattr(model_admin, "get_exclude", lambda request, obj=None: None)
    shown = editor.get(reverse(DUPLICATES), {"threshold": "0.3"}).context["group_tables"]
    assert [row.excerpt for _, rows in shown for row in rows if row.obj.pk == a.pk] == [f"{a.title} payroll cuts"]


class LedgerAdmin(SemanticAdminMixin, admin.ModelAdmin):
    list_display = ["text"]


def test_duplicate_review_excerpts_a_method_source_when_the_form_hides_no_field(admin_client, settings, monkeypatch):
    """Ledger embeds its method upper(), which may read any field: shown while the change form
    shows every field, as the form's own readonly field, and never once it hides one."""
    cache.clear()
    for text in ("reset my account password", "reset the password of my account", "export invoices as csv"):
        Ledger.objects.create(text=text)
    embed_pending()
    model_admin = serve_admin_site(settings, "ledgeradmin", Ledger, LedgerAdmin)._registry[Ledger]

    def excerpts():
        review = admin_client.get(reverse("ledgeradmin:testapp_ledger_duplicates"), {"threshold": "0.3"})
        return sorted(row.excerpt for _, rows in review.context["group_tables"] for row in rows)

    assert excerpts() == ["RESET MY ACCOUNT PASSWORD", "RESET THE PASSWORD OF MY ACCOUNT"]
    monkeypatch.setattr(model_admin, "exclude", ["text"])
    assert excerpts() == ["", ""]
    monkeypatch.setattr(model_admin, "readonly_fields", ["upper"])
    assert excerpts() == ["RESET MY ACCOUNT PASSWORD", "RESET THE PASSWORD OF MY ACCOUNT"]


@isolate_apps("tests.testapp")
def test_a_field_no_form_ever_shows_is_not_hidden_from_the_excerpt(rf, admin_user):
    """An explicit ``AutoField`` primary key, or a many-to-many through a model of one's own, gets
    no form field from Django: a plain ModelAdmin of such a model hides nothing, so its method
    source is excerpted (no table needed: the excerpt reads the row in memory)."""
    from django.db import models

    from semantic import EmbeddingField

    class Tag(models.Model):
        class Meta:
            app_label = "testapp"

        name = models.CharField(max_length=20)

    class Account(models.Model):
        class Meta:
            app_label = "testapp"

        id = models.AutoField(primary_key=True)
        text = models.TextField()
        embedding = EmbeddingField(source="upper", dimensions=128)

        def upper(self) -> str:
            return self.text.upper()

    class Tagged(models.Model):
        class Meta:
            app_label = "testapp"

        text = models.TextField()
        tags = models.ManyToManyField(Tag, through="Tagging")
        embedding = EmbeddingField(source="upper", dimensions=128)

        def upper(self) -> str:
            return self.text.upper()

    class Tagging(models.Model):
        class Meta:
            app_label = "testapp"

        tagged = models.ForeignKey(Tagged, on_delete=models.CASCADE)
        tag = models.ForeignKey(Tag, on_delete=models.CASCADE)

    request = rf.get("/")
    request.user = admin_user
    for model in (Account, Tagged):
        model_admin = type(f"{model.__name__}Admin", (SemanticAdminMixin, admin.ModelAdmin), {})
        model_admin = model_admin(model, admin.AdminSite(name="isolated"))
        assert model_admin.duplicate_excerpt(request, model(id=1, text="reset my password")) == "RESET MY PASSWORD"
        model_admin.exclude = ["text"]
        assert model_admin.duplicate_excerpt(request, model(id=1, text="reset my password")) == ""


def test_compare_refusals_and_no_delete_links_without_delete_permission(viewer, articles, client):
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    hidden = articles["reset account password secret"]
    response = viewer.get(reverse(COMPARE), {"first": a.pk, "second": b.pk})
    assert response.status_code == 200
    page = response.content.decode()
    assert "/delete/" not in page and "Not a duplicate" not in page  # a viewer may not delete or dismiss
    assert viewer.get(reverse(COMPARE), {"first": a.pk, "second": hidden.pk}).status_code == 404
    assert viewer.get(reverse(COMPARE), {"first": a.pk, "second": a.pk}).status_code == 404
    assert viewer.get(reverse(COMPARE), {"first": a.pk, "second": "x"}).status_code == 404
    client.force_login(staff("nobody"))
    assert client.get(reverse(COMPARE), {"first": a.pk, "second": b.pk}).status_code == 403


def test_find_duplicates_keeps_the_selection_through_threshold_pages_and_dismissal(editor, articles):
    chosen = [articles[t] for t in ("reset my account password", "reset the password of my account")]
    chosen.append(articles["export invoices as csv"])
    data = {"action": "find_duplicates", "index": 0, "_selected_action": [o.pk for o in chosen]}
    response = editor.post(reverse(CHANGELIST) + "?q=a", data, follow=True)
    ((url, status),) = response.redirect_chain
    assert status == 302 and url.startswith(reverse(DUPLICATES) + "?selection=")
    token = response.wsgi_request.GET["selection"]
    page = response.content.decode()
    assert f'<input type="hidden" name="selection" value="{token}">' in page
    assert 'id="threshold" name="threshold"' in page
    assert f'href="{reverse(CHANGELIST)}?q=a"' in page  # back to the list as it was filtered
    # At 0.3 the whole table has two groups; the selection has only the password pair.
    lower = editor.get(reverse(DUPLICATES), {"threshold": "0.3", "selection": token})
    assert [{o.title for o in g.rows} for g in lower.context["groups"]] == [{o.title for o in chosen[:2]}]
    assert len(editor.get(reverse(DUPLICATES), {"threshold": "0.3"}).context["groups"]) >= 2
    # A link naming the keys themselves still reviews just those rows.
    named = editor.get(reverse(DUPLICATES), {"threshold": "0.3", "id": [o.pk for o in chosen]})
    assert [{o.title for o in g.rows} for g in named.context["groups"]] == [{o.title for o in chosen[:2]}]
    bad = editor.get(reverse(DUPLICATES), {"threshold": "abc", "selection": token})
    assert 'name="threshold" value="abc"' in bad.content.decode() and "must be a number" in bad.content.decode()
    assert f'<input type="hidden" name="selection" value="{token}">' in bad.content.decode()
    a, b = chosen[0], chosen[1]
    dismissed = editor.post(reverse(DISMISS), {"first": a.pk, "second": b.pk, "threshold": "0.3", "selection": token})
    assert dismissed["Location"] == reverse(DUPLICATES) + f"?threshold=0.3&selection={token}"


def test_find_duplicates_with_no_selected_row_left_says_so_and_never_reviews_the_table(editor, articles):
    """Rows deleted since the list was shown, or all outside get_queryset() (Django still calls
    the action, with no rows): an empty selection once read as none, and reviewed the whole table."""
    from semantic.admin_duplicates import DuplicateReviewMixin

    gone = [Article.objects.create(title=f"deleted since {n}") for n in range(2)]
    gone_pks = [a.pk for a in gone]
    Article.objects.filter(pk__in=gone_pks).delete()
    hidden = articles["reset account password secret"]
    for selected in (gone, [hidden]):
        response = act(editor, "find_duplicates", *selected)
        assert response.redirect_chain == [(reverse(CHANGELIST), 302)]
        assert [str(m) for m in response.context["messages"]] == [str(DuplicateReviewMixin.NONE_SELECTED_LEFT)]
    # A kept selection whose rows were all deleted since reviews none of the table's.
    chosen = [articles["export invoices as csv"], articles["export all invoices to csv"]]
    link = editor.post(
        reverse(CHANGELIST), {"action": "find_duplicates", "index": 0, "_selected_action": [a.pk for a in chosen]}
    )
    Article.objects.filter(pk__in=[a.pk for a in chosen]).delete()
    assert len(editor.get(reverse(DUPLICATES), {"threshold": "0.3"}).context["groups"]) >= 1
    page = editor.get(link["Location"] + "&threshold=0.3")
    assert page.context["groups"] == [] and page.context["selected_count"] == 0
    assert "Among the 0 selected rows." in page.content.decode()


def test_find_duplicates_of_500_rows_with_six_digit_keys_keeps_its_links_short(editor, fake_gemini):
    """The selection stays in the session: gunicorn refuses request lines over 4,094 bytes."""
    with suspend_embedding():
        Article.objects.bulk_create(Article(pk=100001 + n, title=f"article number {n}") for n in range(500))
    embed_pending()
    data = {"action": "find_duplicates", "index": 0, "_selected_action": list(range(100001, 100501))}
    response = editor.post(reverse(CHANGELIST), data)
    assert response.status_code == 302
    assert len(response["Location"]) < 100
    page = editor.get(response["Location"])
    assert page.status_code == 200
    assert page.context["selected_count"] == 500
    assert "Among the 500 selected rows." in page.content.decode()
    assert len(page.context["state_query"]) < 100 and len(page.context["pages_query"]) < 100


def test_a_selection_the_session_no_longer_holds_says_so(editor, articles):
    from semantic.admin_duplicates import DuplicateReviewMixin

    response = editor.get(reverse(DUPLICATES), {"selection": "0123456789abcdef", "_changelist_filters": "q=a"})
    assert response.status_code == 302 and response["Location"] == reverse(CHANGELIST) + "?q=a"
    assert [str(m) for m in get_messages(response.wsgi_request)] == [str(DuplicateReviewMixin.SELECTION_GONE)]


@pytest.mark.parametrize("token", ["\x00", "0123456789ABCDEF", "0123456789abcdef0", "x" * 200, "ab%00"])
def test_a_garbled_selection_link_is_a_selection_no_longer_kept(editor, articles, token):
    """A hand-edited token is never queried: PostgreSQL refuses text with a NUL byte (a server error)."""
    from semantic.admin_duplicates import DuplicateReviewMixin

    response = editor.get(reverse(DUPLICATES), {"selection": token, "_changelist_filters": "q=a"})
    assert response.status_code == 302 and response["Location"] == reverse(CHANGELIST) + "?q=a"
    assert [str(m) for m in get_messages(response.wsgi_request)] == [str(DuplicateReviewMixin.SELECTION_GONE)]


DISMISS_FORM = re.compile(r'name="first" value="([^"]*)"><input type="hidden" name="second" value="([^"]*)"')


def test_not_a_duplicate_works_for_keys_a_thousand_separator_would_split(editor, fake_gemini, settings):
    """USE_THOUSAND_SEPARATOR formats numbers in templates ("1,500"); keys in forms must stay keys."""
    settings.USE_THOUSAND_SEPARATOR = True
    Article.objects.bulk_create(
        [Article(pk=1500, title="reset my account password"), Article(pk=1501, title="reset my account password")]
    )
    embed_pending()
    review = editor.get(reverse(DUPLICATES), {"threshold": "0.9"}).content.decode()
    assert DISMISS_FORM.findall(review) == [("1500", "1501")]
    compared = editor.get(reverse(COMPARE), {"first": "1500", "second": "1501"}).content.decode()
    assert DISMISS_FORM.findall(compared) == [("1500", "1501")]

    (first, second), *_ = DISMISS_FORM.findall(review)
    dismissed = editor.post(reverse(DISMISS), {"first": first, "second": second, "threshold": "0.9"})
    assert dismissed.status_code == 302
    assert DismissedPair.objects.filter(first_pk="1500", second_pk="1501").exists()


def test_find_duplicates_refuses_a_selection_too_long_for_a_link(viewer, articles):
    model_admin = admin.site._registry[Article]
    model_admin.duplicate_selection_max = 1
    try:
        response = act(
            viewer, "find_duplicates", articles["export invoices as csv"], articles["reset my account password"]
        )
    finally:
        del model_admin.duplicate_selection_max
    assert response.redirect_chain == [(reverse(CHANGELIST), 302)]  # Django's answer to an action returning None
    assert "2 rows selected; “Find duplicates among selected” takes at most 1." in response.content.decode()


def test_dismissed_pairs_name_both_rows_and_survive_deleted_ones(admin_client, articles):
    a, b = articles["export invoices as csv"], articles["export all invoices to csv"]
    gone = Article.objects.create(title="deleted since")
    hidden = articles["reset account password secret"]
    for x, y in ((a, b), (a, gone), (b, hidden)):
        first, second = DismissedPair.ordered(x.pk, y.pk)
        DismissedPair.objects.create(
            model_label="testapp.Article", field_name="embedding", first_pk=first, second_pk=second
        )
    DismissedPair.objects.create(model_label="gone.Model", field_name="embedding", first_pk="1", second_pk="2")
    gone_pk = gone.pk
    gone.delete()
    response = admin_client.get(reverse("admin:semantic_dismissedpair_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    for obj in (a, b):
        assert f'<a href="{reverse("admin:testapp_article_change", args=[obj.pk])}">{obj.title}</a>' in page
    assert f"{gone_pk} (deleted, or hidden from you)" in page
    assert f"{hidden.pk} (deleted, or hidden from you)" in page  # its admin hides it: alike, the key only
    assert hidden.title not in page


def test_dismissed_pairs_list_only_pairs_with_a_row_the_user_sees(client, articles):
    """As the failures list: a pair of rows all hidden from the user is not listed (nor who marked
    it), and a hidden row of a listed pair reads as a deleted one does, so existence never shows."""
    a = articles["export invoices as csv"]
    hidden = articles["reset account password secret"]
    also_hidden = Article.objects.create(title="another hidden one", category="hidden")
    gone = Article.objects.create(title="deleted since", category="hidden")
    for x, y in ((a, hidden), (hidden, also_hidden), (hidden, gone)):
        first, second = DismissedPair.ordered(x.pk, y.pk)
        DismissedPair.objects.create(
            model_label="testapp.Article", field_name="embedding", first_pk=first, second_pk=second, dismissed_by="root"
        )
    DismissedPair.objects.create(model_label="gone.Model", field_name="embedding", first_pk="1", second_pk="2")
    gone.delete()
    client.force_login(staff("pairs", "view_article", "view_dismissedpair"))
    response = client.get(reverse("admin:semantic_dismissedpair_changelist"))
    listed = {(p.model_label, p.first_pk, p.second_pk) for p in response.context["cl"].result_list}
    assert listed == {("testapp.Article", *DismissedPair.ordered(a.pk, hidden.pk)), ("gone.Model", "1", "2")}
    assert f"{hidden.pk} (deleted, or hidden from you)" in response.content.decode()
    first, second = DismissedPair.ordered(hidden.pk, also_hidden.pk)
    unseen = DismissedPair.objects.get(first_pk=first, second_pk=second)
    change = client.get(reverse("admin:semantic_dismissedpair_change", args=[unseen.pk]))
    assert change.status_code == 302  # Django's "doesn't exist. Perhaps it was deleted?"


def test_superusers_see_dismissed_pairs_and_failures_of_a_model_registered_on_another_site(client, notes):
    """Note's ModelAdmin is on "myadmin" only. On admin.site, the pairs list (where a pair is
    undone) and the failures list keep the same rule: a superuser sees every row of such a
    model (named, not linked: its change page is on the other site); staff, none."""
    a, b = notes["reset my account password"], notes["reset the password of my account"]
    first, second = DismissedPair.ordered(a.pk, b.pk)
    DismissedPair.objects.create(
        model_label="testapp.Note", field_name="embedding", first_pk=first, second_pk=second, dismissed_by="root"
    )
    failed(a)
    pairs_url = reverse("admin:semantic_dismissedpair_changelist")
    failures_url = reverse("admin:semantic_embeddingfailure_changelist")

    def listed(url):
        return [p.model_label for p in client.get(url).context["cl"].result_list]

    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    assert listed(pairs_url) == listed(failures_url) == ["testapp.Note"]
    page = client.get(pairs_url).content.decode()
    assert str(a) in page and str(b) in page and "/admin/testapp/note/" not in page
    client.force_login(staff("pairs", "view_note", "view_dismissedpair", "view_embeddingfailure"))
    assert listed(pairs_url) == listed(failures_url) == []


def test_dismissed_pairs_are_read_only_and_may_be_deleted(client, articles):
    """Only "Not a duplicate" makes a pair (it checks both rows may be changed): the form cannot
    re-point one at other rows, or at another user."""
    a, b, c = (
        articles[t] for t in ("export invoices as csv", "export all invoices to csv", "reset my account password")
    )
    first, second = DismissedPair.ordered(a.pk, b.pk)
    pair = DismissedPair.objects.create(
        model_label="testapp.Article", field_name="embedding", first_pk=first, second_pk=second, dismissed_by="root"
    )
    client.force_login(
        staff("pairs", "view_article", "view_dismissedpair", "change_dismissedpair", "delete_dismissedpair")
    )
    url = reverse("admin:semantic_dismissedpair_change", args=[pair.pk])
    form = client.get(url)
    assert form.status_code == 200 and form.context["adminform"].form.fields == {}
    data = {"model_label": "testapp.Article", "field_name": "embedding", "first_pk": c.pk, "second_pk": b.pk}
    assert client.post(url, {**data, "dismissed_by": "someone else"}).status_code == 403
    pair.refresh_from_db()
    assert (pair.first_pk, pair.second_pk, pair.dismissed_by) == (first, second, "root")
    deleted = client.post(reverse("admin:semantic_dismissedpair_delete", args=[pair.pk]), {"post": "yes"})
    assert deleted.status_code == 302 and not DismissedPair.objects.exists()
