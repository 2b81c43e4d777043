"""Suggested labels and Topics in the admin, on real Banking77 messages embedded by the local model."""

from __future__ import annotations

import html
import re
import warnings
from datetime import UTC, date, datetime, time, timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.core.cache.backends.base import CacheKeyWarning
from django.db import connection
from django.db.models import Count
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone, translation

from semantic import embed_pending, suspend_embedding
from semantic.admin import SemanticAdminMixin
from semantic.admin_labels import LABELS_UNAVAILABLE, LEFT_OUT
from semantic.admin_topics import (
    GROUPS_OUT_OF_RANGE,
    GROUPS_OVER_MOST,
    TOO_FEW_TO_GROUP,
    TOPIC_CHANGED,
    TOPIC_SHOWN,
    TOPIC_VAR,
    TOPICS_SAMPLED,
    growth_text,
)
from semantic.classify import predict_labels
from semantic.clusters import Cluster, period_start
from semantic.models import EmbeddingFailure
from tests.fake_gemini import api_error
from tests.test_admin import assert_stays_on_other_site, staff
from tests.test_classify import mid_reembed
from tests.testapp.models import Note
from tests.topicapp.banking77 import INTENTS, sentences
from tests.topicapp.models import CATEGORIES, Queue, Request, Ticket
from tests.urls import other_site

# Fresh sequences: the rows' keys order the sample the number of topics is chosen on,
# so they must not depend on how many rows earlier tests made.
pytestmark = pytest.mark.django_db(transaction=True, reset_sequences=True)

LOCAL = "semantic.backends.local.LocalBackend"
CHANGELIST = "admin:topicapp_ticket_changelist"
TOPICS = "admin:topicapp_ticket_topics"
LABELLED_PER_INTENT = 10
NAMES = dict(CATEGORIES)


@pytest.fixture
def tickets(semantic_settings):
    """Ten labelled and five unlabelled messages per intent; the true intent by primary key."""
    semantic_settings(BACKEND=LOCAL)
    cache.clear()
    truth = {}
    with suspend_embedding():
        for intent, texts in sentences().items():
            for number, text in enumerate(texts):
                ticket = Ticket.objects.create(text=text, category=intent if number < LABELLED_PER_INTENT else "")
                truth[ticket.pk] = intent
    embed_pending(Ticket)
    return truth


@pytest.fixture
def ticket_admin():
    return admin.site._registry[Ticket]


@pytest.fixture
def editor(client):
    client.force_login(staff("editor", "view_ticket", "change_ticket"))
    return client


def suggestions():
    """What the library suggests for every unlabelled, embedded ticket."""
    return {p.pk: p for p in predict_labels(Ticket.objects.all(), "category", k=5)}


def cells(response, column):
    """``{pk: text}`` of one changelist column."""
    index = [h["text"] for h in response.context["result_headers"]].index(column)
    rows = zip(response.context["cl"].result_list, response.context["results"])
    return {obj.pk: re.sub(r"<[^>]+>", "", str(row[index])) for obj, row in rows}


# -- the column and the filter ---------------------------------------------------------------


def test_the_column_shows_each_unlabelled_rows_suggestion_and_confidence(editor, tickets):
    expected = suggestions()
    response = editor.get(reverse(CHANGELIST))
    shown = cells(response, "suggested label")
    assert len(shown) == len(tickets)
    for pk, text in shown.items():
        if pk in expected:
            p = expected[pk]
            assert text == f"{NAMES[p.label]} ({p.confidence:.2f})"
        else:
            assert text == "-"  # labelled by a person: nothing to suggest
    assert sum(text != "-" for text in shown.values()) == len(expected) == 5 * len(INTENTS)


def test_the_column_costs_one_query_per_page_whatever_its_length(editor, tickets, ticket_admin, monkeypatch):
    """Ten rows a page or all 75: the same number of queries, and votes only for the page's rows."""
    counts = {}
    for per_page in (10, 100):
        monkeypatch.setattr(ticket_admin, "list_per_page", per_page)
        with CaptureQueriesContext(connection) as queries:
            response = editor.get(reverse(CHANGELIST), {"o": "1"})  # by text: both pages mix labelled and not
        votes = [q["sql"] for q in queries.captured_queries if "AS share" in q["sql"]]
        assert len(votes) == 1
        page = list(response.context["cl"].result_list)
        assert len(page) == min(per_page, len(tickets))
        asked = {int(pk) for pk in re.search(r"IN \(([\d, ]+)\)", votes[0]).group(1).split(",")}
        assert asked == {row.pk for row in page}
        counts[per_page] = len(queries.captured_queries)
    assert counts[10] == counts[100]


def test_the_filter_splits_unlabelled_rows_by_confidence(editor, tickets, ticket_admin, monkeypatch):
    monkeypatch.setattr(ticket_admin, "semantic_label_confidence", 0.99)
    with suspend_embedding():
        waiting = Ticket.objects.create(text="Where is the card I ordered last week?")
    expected = suggestions()
    sure = {pk for pk, p in expected.items() if p.confidence >= 0.99}
    assert 0 < len(sure) < len(expected)

    def listed(choice):
        response = editor.get(reverse(CHANGELIST), {"semantic_suggestion": choice})
        return {row.pk for row in response.context["cl"].result_list}

    assert listed("confident") == sure
    assert listed("unsure") == set(expected) - sure
    assert listed("none") == {waiting.pk}
    page = editor.get(reverse(CHANGELIST)).content.decode()
    assert "confident (0.99 or more)" in page and "no suggestion" in page


def test_confidences_are_written_as_the_language_writes_numbers(editor, tickets, ticket_admin, monkeypatch, settings):
    """A German page writes "0,99" (as its "At confidence" does): the column, the filter, the message."""
    settings.LANGUAGE_CODE = "de"
    monkeypatch.setattr(ticket_admin, "semantic_label_confidence", 0.99)
    expected = suggestions()
    with translation.override("de"):
        response = editor.get(reverse(CHANGELIST))
        for pk, text in cells(response, "suggested label").items():
            if pk in expected:
                number = f"{expected[pk].confidence:.2f}".replace(".", ",")
                assert text == f"{NAMES[expected[pk].label]} ({number})"
        assert "confident (0,99 or more)" in response.content.decode()
        done = act(editor, {"_selected_action": list(expected), "min_confidence": "0.99", "post": "yes"})
    assert str(next(iter(get_messages(done.wsgi_request)))).endswith("(confidence 0,99 or more).")


# -- the action ------------------------------------------------------------------------------


def act(client, data, query=""):
    return client.post(reverse(CHANGELIST) + query, {"action": "apply_suggested_labels", "index": 0, **data})


def test_apply_asks_for_a_minimum_confidence_then_labels_and_keeps_human_labels(editor, tickets):
    # A person's label the neighbours disagree with, on a selected row: it must stay.
    human = next(pk for pk, intent in tickets.items() if intent == "card_arrival")
    Ticket.objects.filter(pk=human).update(category="terminate_account")
    expected = suggestions()
    sure = {pk for pk, p in expected.items() if p.confidence >= 0.99}
    selected = [*expected, human]

    page = act(editor, {"_selected_action": selected})
    assert page.status_code == 200
    assert page.context["would_change"] == sum(p.confidence >= 0.8 for p in expected.values())
    assert "At confidence 0.8 or more" in page.content.decode()
    assert Ticket.objects.filter(category="").count() == len(expected)  # nothing written yet

    recount = act(editor, {"_selected_action": selected, "min_confidence": "0.99", "preview": "1"})
    assert recount.context["would_change"] == len(sure)
    assert f"{len(sure)} rows would be labelled" in recount.content.decode()
    assert Ticket.objects.filter(category="").count() == len(expected)

    # Someone labels one of the sure rows before the confirmation arrives.
    meanwhile = next(iter(sure))
    Ticket.objects.filter(pk=meanwhile).update(category="exchange_rate")
    done = act(editor, {"_selected_action": selected, "min_confidence": "0.99", "post": "yes"})
    assert done.status_code == 302
    assert [str(m) for m in get_messages(done.wsgi_request)] == [
        f"Labelled {len(sure) - 1} rows with their suggested labels (confidence 0.99 or more)."
    ]
    for pk in sure - {meanwhile}:
        assert Ticket.objects.get(pk=pk).category == expected[pk].label
    assert Ticket.objects.get(pk=meanwhile).category == "exchange_rate"
    assert Ticket.objects.get(pk=human).category == "terminate_account"
    assert set(Ticket.objects.filter(category="").values_list("pk", flat=True)) == set(expected) - sure


def test_apply_labels_only_rows_the_user_may_change_and_logs_each_one(editor, tickets, ticket_admin, monkeypatch):
    """A ModelAdmin that refuses to change some rows (Django asks ``has_change_permission(request, obj)``
    on the row's change form): the action leaves them out, says so, and writes History for the others."""
    expected = suggestions()
    locked = set(list(expected)[:3])
    declared = type(ticket_admin).has_change_permission

    def has_change_permission(request, obj=None):
        if obj is not None and obj.pk in locked:
            return False
        return declared(ticket_admin, request, obj)

    monkeypatch.setattr(ticket_admin, "has_change_permission", has_change_permission)
    one_locked = next(iter(locked))
    assert editor.post(reverse("admin:topicapp_ticket_change", args=[one_locked]), {"text": "x"}).status_code == 403

    page = act(editor, {"_selected_action": list(expected), "min_confidence": "0", "preview": "1"})
    assert page.context["would_change"] == len(expected) - 3
    left_out = "3 rows with a suggested label are left out: you may not change them."
    assert left_out == LEFT_OUT[1] % {"count": 3}
    assert left_out in page.content.decode()

    done = act(editor, {"_selected_action": list(expected), "min_confidence": "0", "post": "yes"})
    assert done.status_code == 302
    assert [str(m) for m in get_messages(done.wsgi_request)] == [
        f"Labelled {len(expected) - 3} rows with their suggested labels (confidence 0.0 or more).",
        left_out,
    ]
    assert set(Ticket.objects.filter(category="").values_list("pk", flat=True)) == locked
    logged = LogEntry.objects.filter(content_type__model="ticket", action_flag=CHANGE)
    assert sorted(int(pk) for pk in logged.values_list("object_id", flat=True)) == sorted(set(expected) - locked)
    assert {(e.user.username, e.get_change_message()) for e in logged} == {("editor", "Changed Category.")}
    labelled_row = next(pk for pk in expected if pk not in locked)
    history = editor.get(reverse("admin:topicapp_ticket_history", args=[labelled_row]))
    assert "Changed Category." in history.content.decode()


def test_apply_to_all_rows_of_a_filtered_list(editor, tickets, ticket_admin, monkeypatch):
    """ "Select all" of the confident rows: the confirmation keeps the list's filter, labels all of them."""
    monkeypatch.setattr(ticket_admin, "semantic_label_confidence", 0.99)
    expected = suggestions()
    sure = {pk for pk, p in expected.items() if p.confidence >= 0.99}
    query = "?semantic_suggestion=confident"
    first = next(iter(sure))
    page = act(editor, {"_selected_action": [first], "select_across": "1"}, query)
    assert page.context["selected_count"] == len(sure)
    assert 'name="select_across" value="1"' in page.content.decode()
    confirmation = {"_selected_action": [first], "select_across": "1", "min_confidence": "0", "post": "yes"}
    done = act(editor, confirmation, query)
    assert done.status_code == 302
    assert {pk for pk in expected if Ticket.objects.get(pk=pk).category} == sure


def test_a_bad_minimum_is_refused_and_nothing_changes(editor, tickets):
    expected = suggestions()
    page = act(editor, {"_selected_action": list(expected), "min_confidence": "1.5", "post": "yes"})
    assert page.status_code == 200
    assert "Ensure this value is less than or equal to 1.0." in page.content.decode()
    assert Ticket.objects.filter(category="").count() == len(expected)


def test_viewers_get_suggestions_but_not_the_action(client, tickets):
    client.force_login(staff("viewer", "view_ticket"))
    response = client.get(reverse(CHANGELIST))
    assert "suggested label" in [h["text"] for h in response.context["result_headers"]]
    assert "apply_suggested_labels" not in response.content.decode()
    refused = act(client, {"_selected_action": list(suggestions()), "min_confidence": "0", "post": "yes"})
    assert refused.status_code == 302
    assert Ticket.objects.filter(category="").count() == 5 * len(INTENTS)


@pytest.mark.parametrize(
    "status, body",
    [
        (500, api_error(500, "Internal error encountered.", "INTERNAL")),
        (429, api_error(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")),
    ],
)
def test_the_api_failing_is_a_warning_and_nothing_is_labelled(editor, fake_gemini, status, body):
    """Nothing labelled yet: suggestions are zero-shot, which embeds the choices' names."""
    for text in ("my card never arrived", "what rate do you give for euros"):
        Ticket.objects.create(text=text)  # embedded by the fake API as it is saved
    selected = list(Ticket.objects.values_list("pk", flat=True))
    cache.clear()  # the choices' vectors from an earlier test
    fake_gemini.fail_every(status, body=body)

    for data in ({}, {"min_confidence": "0", "post": "yes"}):
        response = act(editor, {"_selected_action": selected, **data})
        assert response.status_code == 302
        shown = editor.get(response["Location"])  # the changelist, with the warning
        [message] = [m for m in shown.context["messages"]]
        assert message.level_tag == "warning"
        assert str(message).startswith(LABELS_UNAVAILABLE.format(reason="")), message
        assert f"Gemini API error {status}" in str(message)
        assert not Ticket.objects.exclude(category="").exists()
    fake_gemini.reset()
    done = act(editor, {"_selected_action": selected, "min_confidence": "0", "post": "yes"})
    assert [str(m) for m in get_messages(done.wsgi_request)] == [
        "Labelled 2 rows with their suggested labels (confidence 0.0 or more)."
    ]


NUMBER_INPUT = re.compile(r'<input type="number"[^>]*>')


def test_a_comma_decimal_locale_confirms_with_the_minimum_the_page_shows(
    editor, fake_gemini, ticket_admin, monkeypatch, settings
):
    """A number input takes only "0.25": a browser shows and posts nothing for a German "0,25"."""
    settings.LANGUAGE_CODE = "de"
    monkeypatch.setattr(ticket_admin, "semantic_label_confidence", 0.25)
    for text in ("my card never arrived", "what rate do you give for euros"):
        Ticket.objects.create(text=text)  # embedded by the fake API as it is saved
    cache.clear()  # the choices' vectors from an earlier test
    selected = list(Ticket.objects.values_list("pk", flat=True))

    with translation.override("de"):
        page = act(editor, {"_selected_action": selected})
        [number] = NUMBER_INPUT.findall(page.content.decode())
        assert 'value="0.25"' in number and 'name="min_confidence"' in number
        shown = re.search(r'value="([^"]*)"', number).group(1)
        done = act(editor, {"_selected_action": selected, "min_confidence": shown, "post": "yes"})
    assert done.status_code == 302
    assert Ticket.objects.filter(category="").count() < len(selected)


def test_no_actions_where_django_offers_none(editor, fake_gemini, ticket_admin, monkeypatch):
    """A raw_id_fields lookup popup is for picking a row, and ``actions = None`` turns every action off."""
    for text in ("my card never arrived", "what rate do you give for euros"):
        Ticket.objects.create(text=text)  # embedded by the fake API as it is saved
    cache.clear()  # the choices' vectors from an earlier test
    selected = list(Ticket.objects.values_list("pk", flat=True))
    apply = {"_selected_action": selected, "min_confidence": "0", "post": "yes"}

    popup = editor.get(reverse(CHANGELIST), {"_to_field": "id", "_popup": "1"})
    assert popup.status_code == 200 and popup.context["action_form"] is None
    act(editor, apply, "?_to_field=id&_popup=1")
    assert not Ticket.objects.exclude(category="").exists()

    monkeypatch.setattr(ticket_admin, "actions", None)
    assert editor.get(reverse(CHANGELIST)).context["action_form"] is None
    act(editor, apply)
    assert not Ticket.objects.exclude(category="").exists()


class Django61Actions(admin.ModelAdmin):
    """Django 6.1's ModelAdmin as far as actions go, on the 5.2 the suite runs: get_actions() and
    get_action() take ``action_location`` (the change list, or the change form, new in 6.1) and
    keep the actions declared for it (``func.locations``; the change list's by default)."""

    def get_actions(self, request, action_location="CHANGE_LIST"):
        return {name: a for name, a in super().get_actions(request).items() if self.belongs(a, action_location)}

    def get_action(self, action, action_location="CHANGE_LIST"):
        found = super().get_action(action)
        return found if found and self.belongs(found, action_location) else None

    @staticmethod
    def belongs(action, action_location):
        return action_location in getattr(action[0], "locations", ["CHANGE_LIST"])


class LocatedTicketAdmin(SemanticAdminMixin, Django61Actions):
    """A project's admin written as Django 6.1 asks: an action of its own on both pages, and a
    get_actions() that takes the location and passes it on."""

    semantic_label_field = "category"
    actions = ["mark_reviewed"]

    @admin.action(description="Mark reviewed")
    def mark_reviewed(self, request, queryset):
        pass

    mark_reviewed.locations = ["CHANGE_LIST", "CHANGE_FORM"]

    def get_actions(self, request, action_location="CHANGE_LIST"):
        return super().get_actions(request, action_location=action_location)


def test_a_project_admin_passing_django_61s_action_location_gets_each_page_its_actions(rf, admin_user):
    """The app's actions are the change list's; the project's own stays on its change form."""
    model_admin = LocatedTicketAdmin(Ticket, admin.AdminSite())
    request = rf.get("/")
    request.user = admin_user
    listed = model_admin.get_actions(request, action_location="CHANGE_LIST")
    assert set(listed) == {
        "delete_selected",
        "mark_reviewed",
        "find_similar",
        "find_duplicates",
        "reembed",
        "apply_suggested_labels",
    }
    assert listed["find_similar"] == model_admin.get_action("find_similar")  # as Django gives its own
    assert set(model_admin.get_actions(request, action_location="CHANGE_FORM")) == {"mark_reviewed"}


def test_a_foreign_key_label_is_suggested_and_counted_by_the_related_rows_name(client, semantic_settings):
    semantic_settings(BACKEND=LOCAL)
    editor = client
    editor.force_login(staff("requests", "view_request", "change_request"))
    billing, sign_in = Queue.objects.create(name="Billing"), Queue.objects.create(name="Sign-in")
    for text, queue in [("invoice copy", billing), ("refund my order", billing), ("reset my password", sign_in)]:
        Request.objects.create(text=text, queue=queue)
    waiting = [Request.objects.create(text=text) for text in ("where is my invoice", "cannot sign in")]
    changelist = reverse("admin:topicapp_request_changelist")

    shown = cells(editor.get(changelist), "suggested label")

    names = {str(billing), str(sign_in)}
    assert {re.sub(r" \(\d\.\d\d\)$", "", shown[row.pk]) for row in waiting} <= names
    selected = {"action": "apply_suggested_labels", "index": 0, "_selected_action": [r.pk for r in waiting]}
    page = editor.post(changelist, selected)
    counted = [name for name, _ in page.context["by_label"]]
    assert counted and set(counted) <= names


def test_rows_whose_neighbours_are_not_similar_at_all_get_no_suggestion(editor, fake_gemini):
    """Labelled rows at similarity 0 or below: the row is listed as having no suggestion and
    "Apply suggested labels" counts and writes nothing for it, instead of failing."""
    spec = Ticket._meta.get_field("embedding").spec()
    with suspend_embedding():
        alone = Ticket.objects.create(text="alone", embedding=[1.0] + [0.0] * 383, embedding_spec=spec)
        suggested = Ticket.objects.create(text="near", embedding=[0.0, 1.0] + [0.0] * 382, embedding_spec=spec)
        for vector in ([-1.0] + [0.0] * 383, [0.0, 1.0] + [0.0] * 382):
            Ticket.objects.create(text="labelled", category="card_arrival", embedding=vector, embedding_spec=spec)

    assert cells(editor.get(reverse(CHANGELIST)), "suggested label")[alone.pk] == "-"
    listed = editor.get(reverse(CHANGELIST) + "?semantic_suggestion=none").context["cl"].result_list
    assert [row.pk for row in listed] == [alone.pk]

    page = act(editor, {"_selected_action": [alone.pk, suggested.pk]})
    assert page.status_code == 200
    assert (page.context["suggested_count"], page.context["would_change"]) == (1, 1)
    done = act(editor, {"_selected_action": [alone.pk, suggested.pk], "min_confidence": "0", "post": "yes"})
    assert done.status_code == 302
    assert [str(m) for m in get_messages(done.wsgi_request)] == [
        "Labelled 1 row with its suggested label (confidence 0.0 or more)."
    ]
    assert (Ticket.objects.get(pk=alone.pk).category, Ticket.objects.get(pk=suggested.pk).category) == (
        "",
        "card_arrival",
    )


def test_a_get_queryset_that_filters_and_counts_keeps_every_page_working(editor, tickets, ticket_admin, monkeypatch):
    """The usual per-user ``get_queryset()`` with a ``Count()`` column: its GROUP BY used as the
    vote's examples as they were made Django refuse the query (outer reference) for every user it filters."""
    hidden = "exchange_rate"
    declared = type(ticket_admin).get_queryset

    def get_queryset(request):
        rows = declared(ticket_admin, request)
        if not request.user.is_superuser:
            rows = rows.exclude(category=hidden)
        return rows.annotate(times_listed=Count("pk"))

    monkeypatch.setattr(ticket_admin, "get_queryset", get_queryset)
    visible = Ticket.objects.exclude(category=hidden)
    expected = {p.pk: p for p in predict_labels(visible, "category", k=5, examples=visible)}

    shown = cells(editor.get(reverse(CHANGELIST)), "suggested label")
    assert {pk for pk, text in shown.items() if text != "-"} == set(expected)
    for pk, p in expected.items():
        assert shown[pk] == f"{NAMES.get(p.label, p.label)} ({p.confidence:.2f})"
    for query in (
        {"q": "my card has not come", "semantic": "1"},
        {"embedding_state": "embedded"},
        {"semantic_suggestion": "confident"},
        {"semantic_suggestion": "none"},
    ):
        assert editor.get(reverse(CHANGELIST), query).status_code == 200, query
    assert editor.get(reverse(TOPICS)).status_code == 200
    EmbeddingFailure.objects.create(
        model_label="topicapp.Ticket", field_name="embedding", object_pk=str(next(iter(expected))), error="refused"
    )
    User.objects.get(username="editor").user_permissions.add(
        *Permission.objects.filter(codename__in=["view_embeddingfailure", "change_embeddingfailure"])
    )
    status = editor.get(reverse("admin:semantic_status"))
    assert status.status_code == 200
    assert len(status.context["errors"]) == 1
    assert editor.get(reverse("admin:semantic_embeddingfailure_changelist")).status_code == 200
    assert editor.post(reverse("admin:semantic_status")).status_code == 302
    for action in ("find_similar", "find_duplicates", "reembed"):
        data = {"action": action, "index": 0, "_selected_action": list(expected)[:3]}
        assert editor.post(reverse(CHANGELIST), data).status_code in (200, 302), action
    page = act(editor, {"_selected_action": list(expected)})
    assert page.status_code == 200 and page.context["suggested_count"] == len(expected)
    done = act(editor, {"_selected_action": list(expected), "min_confidence": "0", "post": "yes"})
    assert done.status_code == 302
    assert {pk: Ticket.objects.get(pk=pk).category for pk in expected} == {pk: p.label for pk, p in expected.items()}


# -- Topics ----------------------------------------------------------------------------------


def topic_pks(client, group):
    response = client.get(group.url)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}, response


def test_the_changelist_links_to_topics_of_its_own_filter(editor, tickets):
    page = editor.get(reverse(CHANGELIST), {"q": "card", "o": "1", "p": "1"}).content.decode()
    assert f'href="{reverse(TOPICS)}?q=card&amp;o=1"' in page


def test_topics_groups_the_filtered_list_and_each_group_links_to_exactly_its_rows(editor, tickets):
    chosen = ["exchange_rate", "lost_or_stolen_phone", "terminate_account"]
    query = {"category__in": ",".join(chosen)}
    response = editor.get(reverse(TOPICS), query)  # the number of groups is chosen
    assert response.status_code == 200
    groups = response.context["groups"]
    assert len(groups) == 3
    in_filter = set(Ticket.objects.filter(category__in=chosen).values_list("pk", flat=True))
    assert sum(g.size for g in groups) == len(in_filter)
    page = response.content.decode()
    for group in groups:
        assert {tickets[pk] for pk in group.pks} == {tickets[group.pks[0]]}  # one intent each
        assert f'href="{group.url.replace("&", "&amp;")}"' in page
        assert group.label in page
        for row in group.typical:
            assert reverse("admin:topicapp_ticket_change", args=[row.pk]) in page
        assert "category__in=" in group.url and f"{TOPIC_VAR}=" in group.url
        shown, listed = topic_pks(editor, group)
        assert shown == set(group.pks)
        assert any(f"Showing topic {group.number} of 3" in str(m) for m in listed.context["messages"])
        # "Clear all filters" drops the group; sorting keeps it.
        assert listed.context["cl"].has_active_filters
        assert TOPIC_VAR not in listed.context["cl"].clear_all_filters_qs
        assert TOPIC_VAR in listed.context["cl"].get_query_string({"o": "-1"})
        resorted = editor.get(group.url + "&o=-1")
        assert {row.pk for row in resorted.context["cl"].result_list} == set(group.pks)


def test_the_number_of_groups_can_be_chosen(editor, tickets):
    response = editor.get(reverse(TOPICS), {"semantic_groups": "5"})
    groups = response.context["groups"]
    assert len(groups) == 5
    assert sorted(pk for g in groups for pk in g.pks) == sorted(tickets)
    seen = set()
    for group in groups:
        shown, _ = topic_pks(editor, group)
        assert shown == set(group.pks)
        seen |= shown
    assert seen == set(tickets)
    # Without the Topics page's cache, the list clusters again and finds the same group.
    cache.clear()
    shown, again = topic_pks(editor, groups[1])
    assert shown == set(groups[1].pks)
    assert any(f"Showing topic 2 of 5: “{groups[1].label}”" in str(m) for m in again.context["messages"])
    bad = editor.get(reverse(TOPICS), {"semantic_groups": "many"})
    assert "must be a whole number" in bad.content.decode()
    too_many = editor.get(reverse(TOPICS), {"semantic_groups": "500"})
    assert html.escape(GROUPS_OVER_MOST % {"most": 50, "asked": 500}) in too_many.content.decode()


def test_the_number_of_groups_is_capped_on_the_page_and_in_topic_links(editor, tickets, ticket_admin, monkeypatch):
    """k-means runs in the web request, longer the more groups it makes: a number over
    semantic_topic_max_groups is refused, and a (hand-made) link naming one is an invalid filter."""
    monkeypatch.setattr(ticket_admin, "semantic_topic_max_groups", 4)
    page = editor.get(reverse(TOPICS), {"semantic_groups": "5"})
    assert page.context["groups"] == []
    assert html.escape(GROUPS_OVER_MOST % {"most": 4, "asked": 5}) in page.content.decode()
    assert "at most 4." in page.content.decode()
    assert len(editor.get(reverse(TOPICS), {"semantic_groups": "4"}).context["groups"]) == 4
    monkeypatch.setattr(ticket_admin, "semantic_topic_max_groups", 2)
    assert len(editor.get(reverse(TOPICS)).context["groups"]) == 2  # the number chosen is capped too
    cache.clear()
    linked = editor.get(reverse(CHANGELIST), {TOPIC_VAR: "1.3.0123456789"})
    assert linked.status_code == 302 and linked["Location"] == reverse(CHANGELIST) + "?e=1"
    assert editor.get(reverse(CHANGELIST), {TOPIC_VAR: "1.2.0123456789"}).status_code == 200


def test_topics_of_a_long_list_group_a_sample_and_say_so(editor, tickets, semantic_settings):
    """k-means runs in the web request: past TOPICS_MAX_ROWS, a repeatable sample is grouped."""
    semantic_settings(TOPICS_MAX_ROWS=30)
    response = editor.get(reverse(TOPICS), {"semantic_groups": "3"})
    groups = response.context["groups"]
    grouped = [pk for g in groups for pk in g.pks]
    assert len(grouped) == len(set(grouped)) == 30 and set(grouped) <= set(tickets)
    said = TOPICS_SAMPLED % {"sample": 30, "total": 75}
    assert response.context["sampled"] == said
    assert str(said).replace('"', "&quot;") in response.content.decode()
    # A link lists its group's rows of the sample, from the cache and, without it, clustered again.
    for group in groups:
        assert topic_pks(editor, group)[0] == set(group.pks)
    cache.clear()
    shown, again = topic_pks(editor, groups[0])
    assert shown == set(groups[0].pks)
    assert any(f"Showing topic 1 of 3: “{groups[0].label}”" in str(m) for m in again.context["messages"])
    # A list within the limit is grouped whole, and the page says nothing of samples.
    whole = editor.get(reverse(TOPICS), {"semantic_groups": "3", "category": "exchange_rate"})
    assert sum(g.size for g in whole.context["groups"]) == 10 and not whole.context["sampled"]


def test_topics_show_growth_by_the_date_field(editor, tickets):
    """Exchange-rate questions double from one week to the next: the last two that have
    ended, as the page counts them from today."""
    rates = sorted(pk for pk, intent in tickets.items() if intent == "exchange_rate")
    this_week = period_start(timezone.now(), "week")
    before, last = (datetime.combine(this_week - timedelta(days=days), time(12), UTC) for days in (14, 7))
    Ticket.objects.update(created=last)
    Ticket.objects.filter(pk__in=rates[:5]).update(created=before)
    Ticket.objects.filter(pk__in=rates[5:]).update(created=last)
    response = editor.get(reverse(TOPICS), {"semantic_groups": "5"})
    by_intent = {tickets[g.pks[0]]: g for g in response.context["groups"]}
    assert by_intent["exchange_rate"].growth_text == "+100% (5 → 10)"
    assert by_intent["card_arrival"].growth_text == "—"  # nothing the week before
    page = response.content.decode()
    assert "Growth (last week)" in page and "+100% (5 → 10)" in page
    with translation.override("ar"):  # right to left: "5 → 10" must not be drawn "10 ← 5" reversed
        arabic = editor.get(reverse(TOPICS), {"semantic_groups": "5"}).content.decode()
    assert 'dir="rtl"' in arabic and '<bdi dir="ltr">+100% (5 → 10)</bdi>' in arabic


def test_growth_is_written_as_the_language_writes_numbers(settings):
    settings.LANGUAGE_CODE, settings.USE_THOUSAND_SEPARATOR = "de", True
    grown = Cluster(
        1, 13500, "", [], [], [], compared=((date(2026, 1, 5), 1000), (date(2026, 1, 12), 13500)), growth=12.5
    )
    shrunk = Cluster(2, 1, "", [], [], [], compared=((date(2026, 1, 5), 2), (date(2026, 1, 12), 1)), growth=-0.5)
    with translation.override("de"):
        assert growth_text(grown) == "+1.250% (1.000 → 13.500)"
        assert growth_text(shrunk) == "-50% (2 → 1)"
    assert growth_text(shrunk) == "-50% (2 → 1)"


def test_the_apply_and_topics_pages_words_reach_a_translator(editor, tickets, in_german):
    in_german({"(0 to 1)": "(0 bis 1)", "Growth (last week)": "Wachstum (letzte Woche)"})
    assert "(0 bis 1)</label>" in act(editor, {"_selected_action": list(tickets)}).content.decode()
    assert "Wachstum (letzte Woche)" in editor.get(reverse(TOPICS), {"semantic_groups": "5"}).content.decode()


def test_a_group_link_shows_the_rows_grouped_and_says_when_they_changed(editor, tickets):
    group = editor.get(reverse(TOPICS), {"semantic_groups": "5"}).context["groups"][0]
    twin = Ticket.objects.create(text=Ticket.objects.get(pk=group.pks[0]).text)
    embed_pending(Ticket)
    # The rows the Topics page showed, kept in the cache: the new twin is not among them.
    kept = editor.get(group.url)
    assert {row.pk for row in kept.context["cl"].result_list} == set(group.pks)
    # Clustered again, the twin joins its original's group, and the list says the rows changed.
    cache.clear()
    again = editor.get(group.url)
    said = [str(m) for m in again.context["messages"]]
    assert any("The rows have changed since the Topics page grouped them" in m for m in said)
    assert twin.pk in {row.pk for row in again.context["cl"].result_list}
    malformed = editor.get(reverse(CHANGELIST), {TOPIC_VAR: "first"})
    assert malformed.status_code == 302 and malformed["Location"].endswith("?e=1")
    # A link garbled in an e-mail or edited by hand is an invalid filter, never a cache key.
    token = QueryDict(group.url.split("?", 1)[1])[TOPIC_VAR]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheKeyWarning)  # what memcached refuses, LocMemCache warns of
        for garbled in (token + " ", token + "\n", token + "0" * 300, token.replace(".", ".\x00", 1)):
            response = editor.get(reverse(CHANGELIST), {TOPIC_VAR: garbled})
            assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_topics_of_an_empty_list_say_why_there_are_none(editor, tickets):
    for query in ({"q": "no ticket holds this word"}, {"embedding_state": "failed"}):
        response = editor.get(reverse(TOPICS), query)
        assert response.status_code == 200
        assert html.escape(TOO_FEW_TO_GROUP % {"count": 0}) in response.content.decode()


def test_topics_speak_of_groups_and_items_not_of_k_or_querysets(editor, fake_gemini):
    """The page's box is "Number of groups": its messages say groups, items and embeddings."""
    spec = Ticket._meta.get_field("embedding").spec()
    with suspend_embedding():
        for n in range(3):
            vector = [0.0] * 384
            vector[n] = 1.0
            Ticket.objects.create(text=f"ticket {n}", embedding=vector, embedding_spec=spec)
        Ticket.objects.create(text="not embedded")
    one = Ticket.objects.order_by("pk").first()

    page = editor.get(reverse(TOPICS), {"semantic_groups": "1"}).content.decode()
    assert "3 items of the list, in 1 group." in page
    assert "3 items of the list, in 2 groups." in editor.get(reverse(TOPICS), {"semantic_groups": "2"}).content.decode()
    for asked in (0, 500):
        page = editor.get(reverse(TOPICS), {"semantic_groups": str(asked)}).content.decode()
        expected = GROUPS_OUT_OF_RANGE % {"available": 3, "asked": asked}
        assert html.escape(expected) in page and "k must" not in page
        assert expected.startswith("The number of groups must be from 1 to 3 (the items of this list that have")
    page = editor.get(reverse(TOPICS), {"id__in": str(one.pk)}).content.decode()
    assert html.escape(TOO_FEW_TO_GROUP % {"count": 1}) in page and "queryset" not in page


def test_topics_needs_the_view_permission(client, tickets, ticket_admin, monkeypatch):
    client.force_login(staff("nobody"))
    assert client.get(reverse(TOPICS)).status_code == 403
    # A project that narrows the semantic pages with the documented hook keeps its list.
    client.force_login(staff("viewer", "view_ticket"))
    monkeypatch.setattr(ticket_admin, "has_semantic_view_permission", lambda request: False)
    assert client.get(reverse(CHANGELIST)).status_code == 200
    assert client.get(reverse(TOPICS)).status_code == 403


def test_topics_answers_405_to_post_and_never_runs_an_action_posted_to_it(editor, tickets):
    """The page reads the changelist's rows through its view, which runs the actions posted to it."""
    unlabelled = Ticket.objects.filter(category="").count()
    data = {"action": "apply_suggested_labels", "index": 0, "select_across": "1", "min_confidence": "0", "post": "yes"}
    response = editor.post(reverse(TOPICS), {**data, "_selected_action": list(tickets)})
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    assert Ticket.objects.filter(category="").count() == unlabelled
    assert not list(get_messages(response.wsgi_request))


def test_topics_on_a_custom_admin_site(client, fake_gemini):
    Note.objects.bulk_create(
        [Note(text="reset my account password"), Note(text="reset the password of my account"), Note(text="dark mode")]
    )
    embed_pending()
    client.force_login(staff("other", "view_note"))
    changelist = client.get(reverse("myadmin:testapp_note_changelist"))
    topics = reverse("myadmin:testapp_note_topics")
    assert f'href="{topics}"' in changelist.content.decode()
    page = client.get(topics, {"semantic_groups": "2"})
    assert_stays_on_other_site(page)
    groups = page.context["groups"]
    assert [g.size for g in groups] == [2, 1]
    listed = client.get(groups[0].url)
    assert_stays_on_other_site(listed)
    assert {n.text for n in listed.context["cl"].result_list} == {
        "reset my account password",
        "reset the password of my account",
    }


def test_a_shared_topic_link_tells_nothing_of_rows_the_user_may_not_see(client, fake_gemini, monkeypatch):
    """The Topics page's cache is shared by every user; a group's label and size come from its rows."""
    texts = ["acme acquisition confidential", "acme acquisition confidential terms", "dark mode", "dark mode toggle"]
    Note.objects.bulk_create([Note(text=text) for text in texts])
    embed_pending()
    secret = set(Note.objects.filter(text__startswith="acme").values_list("pk", flat=True))
    note_admin = other_site._registry[Note]
    everything = note_admin.get_queryset

    def per_user(request):
        rows = everything(request)
        return rows if request.user.is_superuser else rows.exclude(pk__in=secret)

    monkeypatch.setattr(note_admin, "get_queryset", per_user)
    client.force_login(User.objects.create_superuser("root", password="pw"))
    groups = client.get(reverse("myadmin:testapp_note_topics"), {"semantic_groups": "2"}).context["groups"]
    [group] = [g for g in groups if set(g.pks) == secret]
    said = [str(m) for m in client.get(group.url).context["messages"]]
    assert said == [TOPIC_SHOWN % {"number": group.number, "k": 2, "label": group.label, "size": 2}]

    client.force_login(staff("other", "view_note"))
    listed = client.get(group.url)
    assert listed.status_code == 200
    said = [str(m) for m in listed.context["messages"]]
    assert said == [TOPIC_CHANGED % {"number": group.number}]
    assert not secret & {row.pk for row in listed.context["cl"].result_list}


def test_the_filter_during_a_re_embed_leaves_out_rows_of_another_size_or_model(editor):
    """Half the table still holds 768-dimensional vectors or another model's: no 500, no vote across them."""
    current, old_size, old_model = mid_reembed()

    def listed(choice):
        response = editor.get(reverse(CHANGELIST), {"semantic_suggestion": choice})
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert listed("confident") | listed("unsure") == {current.pk}
    assert listed("none") == {old_size.pk, old_model.pk}
    shown = cells(editor.get(reverse(CHANGELIST)), "suggested label")
    assert shown[current.pk].startswith("a (") and shown[old_size.pk] == shown[old_model.pk] == "-"
