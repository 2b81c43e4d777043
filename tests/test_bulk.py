"""Bulk writes through the app's QuerySet keep the hash of text from Python current,
so the rows whose text they change are re-embedded, and only those."""

import pytest

from semantic import embed_pending
from semantic.registry import get_embedding_field
from tests.testapp.models import Card

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cards(fake_gemini):
    """Two embedded cards: text from a field and a method together."""
    rows = [Card.objects.create(title="Refunds", body="within thirty days"), Card.objects.create(title="Shipping")]
    fake_gemini.reset()
    return rows


def pending_pks():
    return set(Card.objects.filter(get_embedding_field(Card).pending()).values_list("pk", flat=True))


def test_bulk_update_of_the_text_is_re_embedded(cards, fake_gemini):
    edited, kept = cards
    edited.body = "within sixty days"
    kept.views = 3
    Card.objects.bulk_update([edited, kept], ["body", "views"])
    assert pending_pks() == {edited.pk}
    embed_pending(Card)
    assert fake_gemini.texts() == ["Refunds\n\nWITHIN SIXTY DAYS"]
    assert not pending_pks()


def test_an_upsert_of_the_text_is_re_embedded(cards, fake_gemini):
    edited, kept = cards
    Card.objects.bulk_create(
        [Card(pk=edited.pk, title="Refunds", body="within sixty days"), Card(pk=kept.pk, title="Shipping")],
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=["title", "body"],
    )
    assert pending_pks() == {edited.pk}
    embed_pending(Card)
    assert fake_gemini.texts() == ["Refunds\n\nWITHIN SIXTY DAYS"]
    assert not pending_pks()
