"""Models built from copies of a model's fields: django-simple-history's historical records.

Its history model copies every field of the recorded model, the EmbeddingField and its
hidden columns included. The copy keeps the vector as it was at each save; nothing
embeds, sweeps or hooks the history table, and saving through either model works,
whichever of our fields the history leaves out.
"""

import pytest

from semantic import embed_pending
from semantic.registry import embedding_fields, get_embedding_field, iter_fields
from semantic.status import field_status
from semantic.text import source_hash
from tests.testapp.models import Diary, Ledger

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_history_model_keeps_copies_and_is_no_embedding_target(fake_gemini):
    diary = Diary.objects.create(text="Reset the password")
    diary.text = "Reset the password from the sign-in page"
    diary.save()

    historical = Diary.history.model
    assert embedding_fields(historical) == []
    assert historical not in {model for model, _ in iter_fields()}
    assert not any(index.name.endswith("_pending") for index in historical._meta.indexes)
    assert fake_gemini.texts() == ["Reset the password", "Reset the password from the sign-in page"]
    versions = list(diary.history.order_by("history_id"))
    assert [v.text for v in versions] == ["Reset the password", "Reset the password from the sign-in page"]
    # Each version holds the columns as that save wrote them: the vector comes after, from the worker.
    assert all(v.embedding is None and v.embedding_embedded_hash is None for v in versions)

    fake_gemini.reset()
    assert f"{historical._meta.label}.embedding" not in embed_pending()
    assert fake_gemini.request_count == 0
    assert field_status(Diary, get_embedding_field(Diary))["embedded"] == 1


def test_a_history_without_the_vector_still_records_every_save(fake_gemini):
    ledger = Ledger.objects.create(text="export the invoices")
    ledger.text = "export all invoices"
    ledger.save()

    (first, second) = ledger.history.order_by("history_id")
    assert (first.text, second.text) == ("export the invoices", "export all invoices")
    assert second.embedding_source_hash == source_hash("EXPORT ALL INVOICES")  # the hash column, copied as saved
    ledger.refresh_from_db()
    assert ledger.embedding is not None
    assert fake_gemini.texts() == ["EXPORT THE INVOICES", "EXPORT ALL INVOICES"]
