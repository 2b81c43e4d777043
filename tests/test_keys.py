"""Rows whose primary key is not an integer (a UUID, as many projects use, or a text code).

The app's own tables keep a row's key as text (passages, failures, pairs marked not
duplicates), and searches compare it with the row's key cast to text or cast it back.
Real PostgreSQL and the fake Gemini server, the texts of tests/test_passages.py.
"""

import uuid

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.urls import reverse

from semantic.clusters import cluster
from semantic.models import DismissedPair, Passage
from semantic.tasks import embed_pending
from tests.test_passages import QUERY, article
from tests.testapp.models import Entry, Report

pytestmark = pytest.mark.django_db(transaction=True)


def passages_of(row: Report) -> list[Passage]:
    return list(Passage.objects.filter(model_label="testapp.Report", object_pk=str(row.pk)).order_by("position"))


@pytest.fixture
def reports(fake_gemini) -> list[Report]:
    rows = [Report.objects.create(title=f"Report {i}", body=article(order)) for i, order in enumerate(([0, 1], [3, 2]))]
    rows.append(Report.objects.create(title="Report 2", body=rows[0].body))  # the same text as the first
    return rows


def test_a_uuid_keyed_row_gets_its_vector_and_its_passages(reports):
    for row in reports:
        row.refresh_from_db()
        assert isinstance(row.pk, uuid.UUID) and row.embedding is not None
        assert [p.position for p in passages_of(row)] == [0, 1]


def test_uuid_keyed_rows_are_searched_by_row_and_by_passage(reports):
    glacier = reports[1]  # its glacier paragraph is its second passage
    (found, *_) = Report.objects.similar_to(QUERY, passages=True)
    assert found.pk == glacier.pk and found.passage_position == 1 and "glacier" in found.passage_text
    assert [row.pk for row in Report.objects.filter(pk=glacier.pk).similar_to(QUERY, passages=True)] == [glacier.pk]
    shown = {row.pk: row.passage_position for row in Report.objects.order_by("title").with_passage(QUERY)}
    assert shown == {reports[0].pk: 0, glacier.pk: 1, reports[2].pk: 0}
    assert glacier.pk in {row.pk for row in Report.objects.similar_to(reports[0])}
    assert reports[0].pk not in {row.pk for row in Report.objects.similar_to(reports[0])}


def test_uuid_keyed_duplicates(reports):
    first, _, copy = reports
    (pair,) = Report.objects.duplicates(0.99)
    assert {pair[0].pk, pair[1].pk} == {first.pk, copy.pk} and pair[0].pk < pair[1].pk
    assert list(Report.objects.duplicates_of(first, 0.99)) == [copy]


def test_uuid_keyed_rows_take_their_passages_when_deleted_even_behind_the_orms_back(reports):
    first, second, copy = reports
    first.delete()
    assert passages_of(first) == []
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM testapp_report WHERE id = %s", [second.pk])
    assert len(passages_of(second)) == 2
    assert embed_pending(Report)["testapp.Report.embedding"]["passages_swept"] == 2
    assert passages_of(second) == [] and len(passages_of(copy)) == 2


def test_the_admin_finds_reviews_and_dismisses_uuid_keyed_rows(admin_client, reports):
    first, glacier, copy = reports
    changelist = reverse("admin:testapp_report_changelist")
    found = admin_client.post(changelist, {"action": "find_similar", ACTION_CHECKBOX_NAME: [str(first.pk)]})
    ((row, neighbours),) = found.context["results"]
    assert row.pk == first.pk and neighbours[0].pk == copy.pk
    assert reverse("admin:testapp_report_change", args=[copy.pk]) in found.content.decode()
    change = admin_client.get(reverse("admin:testapp_report_change", args=[glacier.pk]))
    assert {x.pk for x in change.context["semantic_similar"]} == {first.pk, copy.pk}

    review = reverse("admin:testapp_report_duplicates") + "?threshold=0.99"
    (group,) = admin_client.get(review).context["groups"]
    assert {x.pk for x in group.rows} == {first.pk, copy.pk}
    dismiss = reverse("admin:testapp_report_dismiss_duplicate")
    admin_client.post(dismiss, {"first": str(copy.pk), "second": str(first.pk), "threshold": "0.99"})
    assert DismissedPair.objects.get().first_pk == str(min(first.pk, copy.pk))
    assert admin_client.get(review).context["groups"] == []
    assert admin_client.post(dismiss, {"first": str(first.pk), "second": "not-a-uuid"}).status_code == 404


def test_text_keyed_rows_are_embedded_searched_and_grouped(fake_gemini):
    texts = {
        "DOC/0 x?&#": "Reset the password from the sign-in page",
        "DOC/1": "Reset the password when the link expired",
        "doc-2": "Export the invoices of the year",
        "DOC 3": "Export the invoices as a spreadsheet",
    }
    for code, text in texts.items():
        Entry.objects.create(code=code, text=text)
    assert Entry.objects.filter(embedding__isnull=False).count() == 4
    nearest = Entry.objects.similar_to(texts["doc-2"])[0]
    assert nearest.pk == "doc-2" and nearest.similarity == pytest.approx(1.0)

    topics = cluster(Entry.objects.all(), k=2)

    assert sorted(pk for topic in topics for pk in topic.pks) == sorted(texts)
    words = {word for topic in topics for word in topic.words}
    assert words and words <= {w for text in texts.values() for w in text.lower().split()}
