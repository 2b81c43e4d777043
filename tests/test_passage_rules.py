"""Passages cut by an earlier version's rules (review 4 upgrade-runtime F3, F4): the earlier rules
measured passages in characters, so a Japanese text four times Gemini's window in weight was one
passage, and stored control characters as spaces. Rows so cut lag after the upgrade: the sweep
cuts them again and sends only the passages whose text changed.

Real PostgreSQL and the fake Gemini server. The earlier version's passages are written as it
wrote them: the marker without the rules' version, the text as sent.
"""

import hashlib

import pytest

from semantic.field_text import TITLE_SEPARATOR
from semantic.models import Passage
from semantic.passage_rows import cut, lagging_rows
from semantic.tasks import embed_pending
from semantic.text import sanitize, source_hash
from tests.test_passages import TOPICS, paragraph
from tests.testapp.models import LongRead

pytestmark = pytest.mark.django_db(transaction=True)

FIELD = LongRead._meta.get_field("embedding")
JAPANESE = "".join(f"氷河はゆっくりと谷を下り、岩を削って地形を変えていく{n}番目の文です。" for n in range(180))


def passages_of(row):
    return list(Passage.objects.filter(object_pk=str(row.pk), field_name="embedding").order_by("position"))


def earlier_marker(row) -> str:
    """``cut_from`` as the earlier version computed it: the row's text hash and the sizes only."""
    max_chars, overlap = FIELD.passage_sizes()
    row_hash = getattr(row, FIELD.embedded_hash_name)
    return hashlib.md5(f"{row_hash}|{max_chars}|{overlap}".encode()).hexdigest()


def cut_by_the_earlier_rules(latin, japanese) -> None:
    for passage in passages_of(latin):  # same cuts, text stored as sent
        Passage.objects.filter(pk=passage.pk).update(text=sanitize(passage.text), cut_from=earlier_marker(latin))
    # 5,000-odd characters, under 8,000: one passage, its end beyond what Gemini reads.
    [*_, last] = passages_of(japanese)
    Passage.objects.filter(object_pk=str(japanese.pk)).delete()
    text_hash = source_hash(sanitize(JAPANESE) + TITLE_SEPARATOR + japanese.title)
    Passage.objects.create(
        model_label="testapp.LongRead", field_name="embedding", object_pk=str(japanese.pk), position=0, start=0,
        end=len(JAPANESE), text=JAPANESE, text_hash=text_hash, cut_from=earlier_marker(japanese),
        spec=FIELD.spec(), vector=last.vector,
    )  # fmt: skip


def test_passages_cut_by_the_earlier_rules_are_cut_again_sending_only_those_that_changed(fake_gemini):
    body = "\n\n\f".join(paragraph(*TOPICS[n]) for n in range(3))  # pdftotext's page breaks
    latin = LongRead.objects.create(title="Pages", body=body)
    japanese = LongRead.objects.create(title="氷河", body=JAPANESE)
    embed_pending(LongRead)
    latin.refresh_from_db()
    japanese.refresh_from_db()
    new_cut = len(cut(FIELD, japanese).pieces)
    assert len(passages_of(latin)) == 3 and new_cut > 1
    cut_by_the_earlier_rules(latin, japanese)
    assert [p.text for p in passages_of(latin)] != [body[p.start : p.end] for p in passages_of(latin)]
    assert set(lagging_rows(LongRead, FIELD).values_list("pk", flat=True)) == {latin.pk, japanese.pk}
    fake_gemini.reset()

    summary = embed_pending(LongRead)["testapp.LongRead.embedding"]

    assert summary["embedded"] == 0 and summary["passage_rows"] == 2
    assert summary["passages"] == new_cut and summary["passages_reused"] == 3  # no Latin passage sent
    assert [p.text for p in passages_of(latin)] == [body[p.start : p.end] for p in passages_of(latin)]
    assert any("\f" in p.text for p in passages_of(latin))
    assert [(p.start, p.end) for p in passages_of(japanese)] == [(p.start, p.end) for p in cut(FIELD, japanese).pieces]
    assert not lagging_rows(LongRead, FIELD).exists()
    assert embed_pending(LongRead)["testapp.LongRead.embedding"]["passages"] == 0


def test_a_nul_in_a_passage_becomes_a_space_in_the_text_to_store():
    """A source that is a method may return a NUL (PDF or OCR text), which a PostgreSQL ``text``
    column refuses: the passage's text keeps a space in its place, one for one."""
    row = LongRead(pk=1, title="Scan", body="Before the byte\x00after the byte. " * 600)

    pieces = cut(FIELD, row).pieces

    assert len(pieces) > 1
    assert all(piece.text == row.body[piece.start : piece.end].replace("\x00", " ") for piece in pieces)
