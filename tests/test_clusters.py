"""Groups of similar real Banking77 messages: separation, typical rows, labels, growth."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from django.core.management import CommandError
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.test import override_settings

from semantic import embed_pending, suspend_embedding
from semantic.clusters import cluster, period_start
from semantic.keyword_index import keyword_index
from semantic.management.commands.semantic_topics import Command
from tests.commands import call, call_failing
from tests.docsapp.models import Page
from tests.testapp.models import Article, FeaturedArticle
from tests.topicapp.banking77 import INTENTS, sentences
from tests.topicapp.models import Ticket

LOCAL = "semantic.backends.local.LocalBackend"
MONDAY = datetime(2026, 11, 16, 9, tzinfo=UTC)


@pytest.fixture
def tickets(semantic_settings):
    """Fifteen messages per intent, embedded by the local model; the intent by pk."""
    semantic_settings(BACKEND=LOCAL)
    intents = {}
    with suspend_embedding():
        for intent, texts in sentences().items():
            for text in texts:
                intents[Ticket.objects.create(text=text, category=intent).pk] = intent
    embed_pending(Ticket)
    return intents


def majority(topic, intents):
    (intent, count), *_ = Counter(intents[pk] for pk in topic.pks).most_common(1)
    return intent, count / topic.size


@pytest.mark.parametrize("streaming", [False, True], ids=["kmeans", "minibatch-stream"])
@pytest.mark.django_db(transaction=True)
def test_clearly_different_intents_fall_into_their_own_groups(tickets, streaming):
    topics = cluster(Ticket.objects.all(), k=len(INTENTS), streaming=streaming, batch_size=20)
    assert sum(t.size for t in topics) == len(tickets)
    assert [t.number for t in topics] == list(range(1, len(INTENTS) + 1))
    assert [t.size for t in topics] == sorted((t.size for t in topics), reverse=True)
    found = [majority(t, tickets) for t in topics]
    assert sorted(intent for intent, _ in found) == sorted(INTENTS)
    assert all(purity >= 0.8 for _, purity in found), found


@pytest.mark.django_db(transaction=True)
def test_each_group_has_typical_rows_and_a_label_from_its_words(tickets):
    topics = cluster(Ticket.objects.all(), k=len(INTENTS))
    for topic in topics:
        assert len(topic.typical) == 3
        assert {row.pk for row in topic.typical} <= set(topic.pks)
        assert topic.words and topic.label == ", ".join(topic.words)
    by_intent = {majority(t, tickets)[0]: t for t in topics}
    assert "exchange" in by_intent["exchange_rate"].words or "rate" in by_intent["exchange_rate"].words
    assert "card" in by_intent["card_arrival"].words
    assert {"passcode", "forgot", "reset"} & set(by_intent["passcode_forgotten"].words)


@pytest.mark.django_db(transaction=True)
def test_the_number_of_groups_is_chosen_when_not_given(tickets):
    topics = cluster(Ticket.objects.filter(category__in=["exchange_rate", "lost_or_stolen_phone", "terminate_account"]))
    assert len(topics) == 3
    assert sorted(majority(t, tickets)[0] for t in topics) == [
        "exchange_rate",
        "lost_or_stolen_phone",
        "terminate_account",
    ]


@pytest.mark.django_db(transaction=True)
def test_growth_over_time_per_group(tickets):
    """Exchange-rate questions double from one week to the next; card arrivals halve."""
    rows = Ticket.objects.filter(category__in=["exchange_rate", "card_arrival"]).order_by("pk")
    for intent, first_week in (("exchange_rate", 5), ("card_arrival", 10)):
        for number, ticket in enumerate(rows.filter(category=intent)):
            week = 0 if number < first_week else 1
            Ticket.objects.filter(pk=ticket.pk).update(created=MONDAY + timedelta(days=7 * week, hours=10 * number))
    weeks = [(MONDAY + timedelta(days=7 * n)).date() for n in range(3)]
    topics = cluster(rows, k=2, date_field="created", today=weeks[2])
    by_intent = {majority(t, tickets)[0]: t for t in topics}
    assert by_intent["exchange_rate"].trend == [(weeks[0], 5), (weeks[1], 10), (weeks[2], 0)]
    assert by_intent["exchange_rate"].growth == pytest.approx(1.0)
    assert by_intent["card_arrival"].trend == [(weeks[0], 10), (weeks[1], 5), (weeks[2], 0)]
    assert by_intent["card_arrival"].growth == pytest.approx(-0.5)


@pytest.mark.django_db(transaction=True)
def test_growth_leaves_out_the_period_still_filling(tickets):
    """One row a day, up to a Wednesday: the two weeks before it are equal, whatever that
    week has had so far (three days of rows against seven)."""
    wednesday = (MONDAY + timedelta(days=23)).date()
    rows = list(Ticket.objects.order_by("pk")[:24])
    for day, ticket in enumerate(rows):
        Ticket.objects.filter(pk=ticket.pk).update(created=MONDAY + timedelta(days=day))
    (topic,) = cluster(Ticket.objects.filter(pk__in=[t.pk for t in rows]), k=1, date_field="created", today=wednesday)
    assert topic.trend[-1] == (wednesday - timedelta(days=2), 3)
    assert topic.compared == ((wednesday - timedelta(days=16), 7), (wednesday - timedelta(days=9), 7))
    assert topic.growth == 0.0
    chosen = Ticket.objects.filter(pk__in=[t.pk for t in rows])
    (month,) = cluster(chosen, k=1, date_field="created", period="month", today=wednesday)
    assert month.compared is None and month.growth is None  # November only: December has not ended


@pytest.mark.django_db(transaction=True)
def test_a_period_without_rows_is_a_zero_in_the_trend_and_in_growth(tickets):
    """Ten rows in the week of 2 November, ten in that of the 16th, none between: the last
    two weeks that have ended on the 25th are 0 and 10, which is no growth figure, not 0."""
    rows = list(Ticket.objects.order_by("pk")[:20])
    weeks = [date(2026, 11, 2) + timedelta(days=7 * n) for n in range(4)]
    for number, ticket in enumerate(rows):
        created = datetime(2026, 11, 2 if number % 2 else 16, 12, tzinfo=UTC)
        Ticket.objects.filter(pk=ticket.pk).update(created=created)
    chosen = Ticket.objects.filter(pk__in=[t.pk for t in rows])
    (topic,) = cluster(chosen, k=1, date_field="created", today=date(2026, 11, 25))
    assert topic.trend == [(weeks[0], 10), (weeks[1], 0), (weeks[2], 10), (weeks[3], 0)]
    assert topic.compared == ((weeks[1], 0), (weeks[2], 10))
    assert topic.growth is None
    # Nothing since: the trend runs on to the current week, and growth says the fall.
    (later,) = cluster(chosen, k=1, date_field="created", today=date(2026, 12, 2))
    assert later.trend[-3:] == [(weeks[2], 10), (weeks[3], 0), (weeks[3] + timedelta(days=7), 0)]
    assert later.compared == ((weeks[2], 10), (weeks[3], 0))
    assert later.growth == -1.0


@pytest.mark.django_db(transaction=True)
def test_days_and_weeks_are_cut_in_the_current_time_zone_as_django_cuts_them(tickets):
    """08:00 on Tuesday the 17th and on Monday the 23rd in Tokyo are still the 16th and the
    22nd (a Sunday) in UTC: the rows belong to Tokyo's days and weeks, as TruncDate says."""
    rows = list(Ticket.objects.order_by("pk")[:12])
    for number, ticket in enumerate(rows):
        created = datetime(2026, 11, 16 if number < 4 else 22, 23, tzinfo=UTC) if number < 8 else MONDAY
        Ticket.objects.filter(pk=ticket.pk).update(created=created)
    chosen = Ticket.objects.filter(pk__in=[t.pk for t in rows])
    with override_settings(TIME_ZONE="Asia/Tokyo"):
        (days,) = cluster(chosen, k=1, date_field="created", period="day", today=date(2026, 11, 24))
        by_django = dict(chosen.annotate(day=TruncDate("created")).values_list("day").annotate(Count("pk")))
        (weeks,) = cluster(chosen, k=1, date_field="created", today=date(2026, 11, 24))
        assert period_start(datetime(2026, 11, 22, 23, tzinfo=UTC), "week") == date(2026, 11, 23)
    assert by_django == {date(2026, 11, 16): 4, date(2026, 11, 17): 4, date(2026, 11, 23): 4}
    assert {day: n for day, n in days.trend if n} == by_django
    assert days.trend[0] == (date(2026, 11, 16), 4) and days.trend[-1] == (date(2026, 11, 24), 0)
    assert weeks.trend == [(date(2026, 11, 16), 8), (date(2026, 11, 23), 4)]


@pytest.mark.django_db(transaction=True)
def test_without_time_zones_the_stored_local_times_are_cut_as_they_are(tickets):
    rows = list(Ticket.objects.order_by("pk")[:6])
    with override_settings(USE_TZ=False, TIME_ZONE="Asia/Tokyo"):
        for number, ticket in enumerate(rows):
            Ticket.objects.filter(pk=ticket.pk).update(created=datetime(2026, 11, 17 if number < 2 else 23, 8))
        chosen = Ticket.objects.filter(pk__in=[t.pk for t in rows])
        (days,) = cluster(chosen, k=1, date_field="created", period="day", today=date(2026, 11, 24))
        by_django = dict(chosen.annotate(day=TruncDate("created")).values_list("day").annotate(Count("pk")))
    assert by_django == {date(2026, 11, 17): 2, date(2026, 11, 23): 4}
    assert {day: n for day, n in days.trend if n} == by_django
    assert len(days.trend) == 8 and days.compared == ((date(2026, 11, 22), 0), (date(2026, 11, 23), 4))


@pytest.mark.django_db(transaction=True)
def test_bad_input_is_refused_clearly(tickets):
    with pytest.raises(ValueError, match="k must be an integer"):
        cluster(Ticket.objects.all(), k=0)
    with pytest.raises(ValueError, match="not a date"):
        cluster(Ticket.objects.all(), k=2, date_field="text")
    with pytest.raises(ValueError, match="at least two rows"):
        cluster(Ticket.objects.filter(pk=-1), k=2)


@pytest.mark.django_db(transaction=True)
def test_command_exports_topics_as_json_and_csv(tickets, tmp_path):

    out, _ = call("semantic_topics", "topicapp.Ticket", "--k", "5", "--format", "json")
    topics = json.loads(out)
    assert sum(t["size"] for t in topics) == len(tickets)
    assert all(len(t["typical"]) == 3 and t["label"] for t in topics)

    target = tmp_path / "topics.csv"
    out, _ = call("semantic_topics", "topicapp.Ticket", "--k", "5", "--output", str(target))
    assert Command.WROTE.format(groups=5, rows=len(tickets), output=target) in out
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 15
    assert {r["topic"] for r in rows} == {"1", "2", "3", "4", "5"}

    assert "trend" not in rows[0]

    # --date-field: each row also carries its topic's rows per period, as --help promises.
    Ticket.objects.update(created=MONDAY)
    Ticket.objects.filter(pk__in=list(tickets)[:10]).update(created=MONDAY + timedelta(days=7))
    out, _ = call("semantic_topics", "topicapp.Ticket", "--k", "5", "--date-field", "created")
    rows = list(csv.DictReader(io.StringIO(out)))
    counted = {}
    for row in rows:
        counted[row["topic"]] = {start: int(n) for start, n in (cell.split(":") for cell in row["trend"].split(";"))}
    first, second = MONDAY.date().isoformat(), (MONDAY + timedelta(days=7)).date().isoformat()
    assert sum(c.get(first, 0) for c in counted.values()) == len(tickets) - 10
    assert sum(c.get(second, 0) for c in counted.values()) == 10

    missing = tmp_path / "no such folder" / "topics.csv"
    with pytest.raises(CommandError) as info:
        call("semantic_topics", "topicapp.Ticket", "--k", "5", "--output", str(missing))
    assert str(info.value) == Command.CANNOT_WRITE.format(output=missing, error="No such file or directory")


@pytest.mark.django_db(transaction=True)
def test_a_multi_table_child_is_grouped_by_the_text_in_its_parents_table(fake_gemini):
    titles = ["Reset the password", "Reset the password link", "Export the invoices", "Export the invoices now"]
    for title in titles:
        FeaturedArticle.objects.create(title=title, body="")
    Article.objects.create(title="Not featured at all", body="")

    topics = cluster(FeaturedArticle.objects.all(), k=2)

    assert sum(topic.size for topic in topics) == len(titles)
    words = {word for topic in topics for word in topic.words}
    assert words and words <= {"reset", "password", "link", "export", "invoices", "now"}


def unit(*values, dimensions=384):
    vector = np.zeros(dimensions)
    vector[: len(values)] = values
    return (vector / np.linalg.norm(vector)).tolist()


@pytest.mark.django_db
def test_labels_count_a_word_once_in_any_normal_form_and_chinese_and_japanese_by_character_pairs():
    """NFD text (macOS file names, some PDF extractions) is the same word as NFC; Chinese and
    Japanese put no space between words, so their labels are the character pairs the rows share."""
    spec = Ticket._meta.get_field("embedding").spec()
    desserts = [
        "Crème brûlée for dinner",
        "A crème brûlée recipe",
        "Crème brûlée with berries",
        "The best crème brûlée",
    ]
    groups = {
        "dessert": [
            unicodedata.normalize("NFD" if number % 2 else "NFC", text) for number, text in enumerate(desserts)
        ],
        "chinese": [
            "北京今天下雨，记得带伞。",
            "北京明天还会下雨吗？",
            "下雨天北京的交通很堵。",
            "北京下雨了，航班延误。",
        ],
        "japanese": [
            "東京で雨が降っています。",
            "東京は明日も雨です。",
            "雨の東京、傘を忘れずに。",
            "東京の雨はいつ止む？",
        ],
        "password": [
            "Reset my password",
            "I forgot my password, reset it",
            "Password reset link",
            "Reset password now",
        ],
    }
    with suspend_embedding():
        for axis, texts in enumerate(groups.values()):
            for number, text in enumerate(texts):
                values = [0.0] * 8
                values[axis], values[4 + number] = 1.0, 0.1
                Ticket.objects.create(text=text, embedding=unit(*values), embedding_spec=spec)
    topics = {topic.typical[0].text: topic for topic in cluster(Ticket.objects.all(), k=4)}
    words = {name: next(t.words for text, t in topics.items() if text in texts) for name, texts in groups.items()}
    assert len({unicodedata.normalize("NFC", word) for word in words["dessert"]}) == len(words["dessert"])
    assert "brûlée" in words["dessert"] and "crème" in words["dessert"]
    assert all(unicodedata.is_normalized("NFC", word) for found in words.values() for word in found)
    assert {"北京", "下雨"} <= set(words["chinese"])
    assert "東京" in words["japanese"]
    assert words["password"] == ["password", "reset"]


GERMAN = {
    "password": [
        "Ich habe mein Passwort vergessen und kann nicht rein",
        "Mein Passwort geht nicht, ich habe es versucht",
        "Ich habe das Passwort nicht mehr",
        "Passwort funktioniert nicht, habe Hilfe nötig",
    ],
    "delivery": [
        "Wo bleibt die Lieferung meiner Bestellung",
        "Die Lieferung der Bestellung ist verspätet",
        "Bestellung bestellt, Lieferung fehlt",
        "Lieferung und Bestellung kommen nie",
    ],
}


def german_rows(model, text_field):
    spec = model._meta.get_field("embedding").spec()
    with suspend_embedding():
        for axis, texts in enumerate(GERMAN.values()):
            for number, text in enumerate(texts):
                values = [0.0] * 6
                values[axis], values[2 + number] = 1.0, 0.1
                model.objects.create(embedding=unit(*values), embedding_spec=spec, **{text_field: text})


def label_words(queryset, **options):
    return sorted(sorted(topic.words) for topic in cluster(queryset, k=2, **options))


@pytest.mark.django_db
def test_labels_leave_out_the_stop_words_of_the_configuration_given_else_the_keyword_index(monkeypatch, client):
    """German function words ("habe", "nicht") fill English-only labels; German's stop words drop them."""
    from django.contrib import admin
    from django.urls import reverse

    from tests.test_admin import staff

    german_rows(Ticket, "text")
    assert {"habe", "nicht"} <= {word for words in label_words(Ticket.objects.all()) for word in words}
    assert label_words(Ticket.objects.all(), config="german") == [["bestellung", "lieferung"], ["passwort"]]
    out, _ = call("semantic_topics", "topicapp.Ticket", "--k", "2", "--config", "german", "--format", "json")
    assert sorted(topic["label"] for topic in json.loads(out)) == ["bestellung, lieferung", "passwort"]
    # A mistyped name: one line saying so (it was PostgreSQL's ProgrammingError, as a traceback).
    *_, error = call_failing("semantic_topics", "topicapp.Ticket", "--config", "germna")
    assert error == Command.UNKNOWN_CONFIG.format(config="germna")
    monkeypatch.setattr(admin.site._registry[Ticket], "semantic_topic_config", "german")
    client.force_login(staff("editor", "view_ticket"))
    response = client.get(reverse("admin:topicapp_ticket_topics"), {"semantic_groups": "2"})
    assert sorted(group.label for group in response.context["groups"]) == ["bestellung, lieferung", "passwort"]
    # A model whose KeywordIndex searches German text: its configuration is the default.
    german_rows(Page, "title")
    monkeypatch.setattr(keyword_index(Page), "config", "german")
    assert label_words(Page.objects.all()) == [["bestellung", "lieferung"], ["passwort"]]


@pytest.mark.django_db(transaction=True)
def test_rows_of_one_text_are_one_topic_in_the_library_the_command_and_the_admin(client):
    """Their vectors are the same: no k from 2 up splits them, so there is one group."""
    from django.urls import reverse

    from tests.test_admin import staff

    with suspend_embedding():
        pks = [Ticket.objects.create(text="test").pk for _ in range(5)]
    embed_pending(Ticket)

    (topic,) = cluster(Ticket.objects.all())
    assert (topic.size, sorted(topic.pks), topic.label) == (5, pks, "test")

    out, _ = call("semantic_topics", "topicapp.Ticket", "--format", "json")
    assert [(t["topic"], t["size"], t["label"]) for t in json.loads(out)] == [(1, 5, "test")]

    client.force_login(staff("editor", "view_ticket"))
    response = client.get(reverse("admin:topicapp_ticket_topics"))
    assert response.status_code == 200
    assert [(g.size, sorted(g.pks)) for g in response.context["groups"]] == [(5, pks)]
