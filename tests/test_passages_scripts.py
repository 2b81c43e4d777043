"""Passages and token estimates in scripts other than English.

Sizes are English-equivalent characters (``semantic.text.weighted_length``): a Chinese
character weighs 4, about the one token it costs, so a Chinese passage holds a quarter
of the characters an English one does and still fits what the model reads. English and
other Latin-script texts must be cut exactly as they were when sizes were plain
character counts: a changed boundary would re-embed every existing user's passages.
"""

import hashlib
import random
import re

import pytest

from semantic import ratelimit, suspend_embedding
from semantic.models import Passage
from semantic.passages import split
from semantic.text import char_weight, weighted_length
from tests.commands import call
from tests.testapp.models import LongRead

WORDS = (
    "the of and a to in is was that for on with as by at from his her it an were are which this be or has had "
    "river mountain glacier engine library treaty orchestra harbour merchant winter railway parliament"
).split()
EUROPEAN = (
    "déjà café naïve façade garçon élève Straße Müller Größe Übermut Łódź źdźbło żółć być señor mañana "
    "acción pingüino São João coração Ærø smørrebrød Åsa über crème brûlée Dvořák škoda město "
    "Việt Nam tiếng nói"
).split()
CHINESE = (
    "冰川在夏天慢慢后退 火山喷发时岩浆流向山谷 小提琴手在音乐厅里演奏协奏曲 面包师清晨把面团放进烤箱 "
    "卫星沿着轨道绕地球运行 足球比赛在体育场里进行 图书馆收藏了许多古老的手稿 铁路把城市和港口连在一起"
).split()
#: (max_chars, overlap): Gemini's passages, the local model's, and two small sizes that cut inside words.
SIZES = [(8000, 1000), (900, 112), (300, 40), (120, 0)]


def prose(seed: int, words: list[str], paragraphs: int = 40) -> str:
    """A text with headings, long and short paragraphs, line breaks, curly quotes, dashes,
    ellipses and long URLs (words longer than a small passage)."""
    rng = random.Random(seed)
    out = []
    for n in range(paragraphs):
        if rng.random() < 0.15:
            out.append(f"Heading {n}: {rng.choice(words).title()}")
            continue
        sentences = []
        for _ in range(rng.randint(1, 30)):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 25)))
            mark = rng.choice([".", ".", ".", "!", "?", "\u2026"])
            if rng.random() < 0.2:
                sentence = f"\u201c{sentence}{mark}\u201d"
                mark = ""
            if rng.random() < 0.2:
                sentence += " \u2014 " + rng.choice(words) + " \u2013 " + rng.choice(words)
            sentences.append(sentence[0].upper() + sentence[1:] + mark)
        if rng.random() < 0.1:
            sentences.append("https://example.com/" + "-".join(rng.choice(words) for _ in range(60)))
        out.append(("\n" if rng.random() < 0.1 else " ").join(sentences))
    return "\n\n".join(out)


def chinese(paragraphs: int = 4, chars: int = 8000, seed: int = 3) -> str:
    """Paragraphs of about ``chars`` Chinese characters; sentences end in 。！？ with no space after."""
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        paragraph = ""
        while len(paragraph) < chars:
            paragraph += "，".join(rng.choice(CHINESE) for _ in range(rng.randint(1, 4))) + rng.choice("。。。！？")
        out.append(paragraph)
    return "\n\n".join(out)


def offsets_digest(passages) -> tuple[int, str]:
    return len(passages), hashlib.sha256(repr([(p.start, p.end) for p in passages]).encode()).hexdigest()[:16]


# -- the weights -------------------------------------------------------------------


def test_latin_script_weighs_its_length_and_other_scripts_weigh_about_their_tokens():
    assert [char_weight(c) for c in "aZ9 ,.é ñ ł ạ ß Æ"] == [1] * 17
    assert [char_weight(c) for c in "\u201c\u201d\u2018\u2019\u2014\u2013\u2026\u20ac"] == [1] * 8
    wide = "中文日本語ひらがなカタカナ한국어\uff21\U0001f600"
    assert [char_weight(c) for c in wide] == [4] * len(wide)
    assert [char_weight(c) for c in "ЖжαΩعשकไ"] == [2] * 8
    assert char_weight("\u0301") == 1  # a combining accent weighs nothing more than its letter
    assert weighted_length(prose(11, WORDS + EUROPEAN)) == len(prose(11, WORDS + EUROPEAN))
    assert weighted_length("Hello, 世界! Привет") == 7 + 8 + 2 + 12


# -- the splitter ------------------------------------------------------------------

#: Passage counts and offsets' digests the splitter gave before sizes were weighted
#: (commit 74b1716, character counts): these texts must still be cut exactly there.
BEFORE = {
    ("english", 8000, 1000): (9, "8b5d5daa2be5c681"),
    ("english", 900, 112): (69, "913f9db129d4f3e3"),
    ("english", 300, 40): (213, "dc4033c21dc3b7ab"),
    ("english", 120, 0): (484, "6c2666fb2960b3e8"),
    ("european", 8000, 1000): (12, "0e30ed9b3aa8ee29"),
    ("european", 900, 112): (76, "4e4bbbe9d33449cd"),
    ("european", 300, 40): (237, "2512d51add4dccbc"),
    ("european", 120, 0): (530, "a8e86ef9c77f701c"),
}


@pytest.mark.parametrize("max_chars,overlap", SIZES)
@pytest.mark.parametrize("language", ["english", "european"])
def test_english_and_european_texts_are_cut_exactly_as_before(language, max_chars, overlap):
    text = prose(7, WORDS) if language == "english" else prose(11, WORDS + EUROPEAN)
    passages = split(text, max_chars=max_chars, overlap=overlap)
    assert offsets_digest(passages) == BEFORE[(language, max_chars, overlap)]


@pytest.mark.parametrize("max_chars,overlap,before", [(8000, 1000, 8), (900, 112, 44)])
def test_a_chinese_article_is_cut_into_passages_the_model_reads_whole(max_chars, overlap, before):
    """Gemini's passage size (8,000: its 2,048 tokens) and the local model's (900: 256 word
    pieces) hold about a quarter as many Chinese characters as English ones."""
    text = chinese()
    assert len(text) == 32_082
    passages = split(text, max_chars=max_chars, overlap=overlap)
    assert all(0 < weighted_length(p.text) <= max_chars for p in passages)
    assert max(len(p.text) for p in passages) <= max_chars // 4
    # ``before`` passages when 8,000 characters were cut (7,000 and 1,000 of each paragraph).
    assert len(passages) >= 2.5 * before
    covered = {i for p in passages for i in range(p.start, p.end)}
    assert covered >= {i for i, char in enumerate(text) if not char.isspace()}  # nothing left out


def test_offsets_slice_the_original_of_mixed_text():
    rng = random.Random(5)
    pieces = [
        *WORDS,
        *CHINESE,
        "日本語の文。",
        "次の文！",
        "emoji 🙂🎉.",
        "Привет, мир.",
        "Ünïcödé —",
        "“quoted.”",
        "한국어 문장입니다.",
    ]
    text = "\n\n".join(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 80))) for _ in range(60))
    for max_chars, overlap in SIZES:
        passages = split(text, max_chars=max_chars, overlap=overlap)
        assert all(text[p.start : p.end] == p.text for p in passages)
        assert all(0 < weighted_length(p.text) <= max_chars for p in passages)
        assert passages[0].start == 0 and passages[-1].end == len(text)
        covered = set()
        for p in passages:
            covered.update(range(p.start, p.end))
        # No word left out (a closing quote after a sentence's mark goes with the break, as it always has).
        assert all(i in covered for i, c in enumerate(text) if c.isalnum())


def test_editing_one_chinese_paragraph_re_cuts_only_its_passage():
    # 180 characters (720 of 788 English-equivalent) each: a passage of its own at the local model's size.
    paragraphs = [chinese(paragraphs=1, chars=180, seed=n)[:180] for n in range(8)]
    before = split("\n\n".join(paragraphs), max_chars=900, overlap=112)
    # Each passage is its paragraph, after the last sentences of the one before (the overlap).
    assert all(p.text.endswith(paragraph) for p, paragraph in zip(before, paragraphs, strict=True))
    paragraphs[3] = "图书馆改写了这一段。" + paragraphs[3][10:]
    after = split("\n\n".join(paragraphs), max_chars=900, overlap=112)
    changed = [(a.text, b.text) for a, b in zip(before, after, strict=True) if a.text != b.text]
    assert len(changed) == 1 and changed[0][1].endswith(paragraphs[3])


# -- token estimates -----------------------------------------------------------------


def test_a_chinese_texts_estimated_tokens_are_about_its_characters():
    text = chinese()
    assert ratelimit.estimated_tokens([text]) == weighted_length(text) // 4 + 1
    assert len(text) * 0.99 <= ratelimit.estimated_tokens([text]) <= len(text) + 1
    english = prose(7, WORDS)
    assert ratelimit.estimated_tokens([english]) == len(english) // 4 + 1  # as before


# -- through the worker and the fake Gemini server ---------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_worker_sends_passages_of_a_chinese_article_within_gemini_tokens(fake_gemini):
    row = LongRead.objects.create(title="四个主题", body=chinese())
    stored = list(Passage.objects.filter(object_pk=str(row.pk), field_name="embedding").order_by("position"))
    sent = fake_gemini.texts()
    # The row's own text (cut at 8,000 characters before sending; the API truncates it by
    # tokens), then its passages: none longer than the 2,048 tokens Gemini reads.
    assert sent[0] == row.body[:8000]
    assert sent[1:] == [p.text for p in stored]
    assert len(stored) == 20
    assert all(len(text) <= 2000 for text in sent[1:])
    assert all(p.vector is not None and row.body[p.start : p.end] == p.text for p in stored)


@pytest.mark.django_db(transaction=True)
def test_dry_run_estimates_a_chinese_tables_tokens_at_about_one_a_character(fake_gemini):
    with suspend_embedding():
        LongRead.objects.create(title="四个主题", body=chinese())
    out, _ = call("semantic_embed", "testapp.LongRead", "--dry-run")
    characters, tokens = map(int, re.findall(r": 1 rows, (\d+) characters \(about (\d+) tokens\)", out)[0])
    fake_gemini.reset()
    call("semantic_embed", "testapp.LongRead")
    sent = fake_gemini.texts()
    # The row's text cut at 8,000, and its passages: all of its characters, some twice (overlaps).
    assert characters == sum(len(text) for text in sent) > 8000 + 32_082 - 3 * 2
    assert tokens == -(-sum(weighted_length(text) for text in sent) // 4)
    assert characters * 0.99 <= tokens <= characters


def test_chinese_text_without_spaces_is_cut_between_sentences():
    """Chinese puts no space after 。！？: a passage still ends at a sentence's end, its
    closing quote kept with it, rather than at a hard cut inside a sentence."""
    sentences = [f"{word}。" for word in CHINESE] + ["他说：「火山喷发了！」"] + [f"{word}？" for word in CHINESE]
    text = "".join(sentences * 12)
    passages = split(text, max_chars=300, overlap=40)
    assert len(passages) > 5
    for passage in passages:
        assert passage.text == text[passage.start : passage.end]
        assert passage.text[-1] in "。？」", passage.text[-5:]
        assert passage.start == 0 or text[passage.start - 1] in "。？」"


def test_a_cut_inside_a_long_run_of_emoji_falls_between_whole_characters():
    """A run with no space is cut where the size runs out, but never inside a ZWJ
    sequence, before a skin tone or a variation selector, or before a combining accent."""
    family, wave, heart = "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f44b\U0001f3fd", "\u2764\ufe0f"
    accented = "e\u0301"  # é written as e and a combining acute accent
    text = (family + wave + heart + accented) * 40
    for max_chars in (50, 77, 120):
        passages = split(text, max_chars=max_chars)
        assert len(passages) > 1
        assert "".join(p.text for p in passages) == text
        for passage in passages[1:]:
            first, before = text[passage.start], text[passage.start - 1]
            assert first != "\u200d" and before != "\u200d", passage.start
            assert first not in "\U0001f3fd\ufe0f\u0301", passage.start


def test_hindi_sentences_end_at_the_danda():
    sentence = "यह एक लंबा वाक्य है जो हिंदी में लिखा गया है और इसमें कई शब्द हैं।"
    text = " ".join([sentence] * 30)
    passages = split(text, max_chars=300)
    assert len(passages) > 1
    assert all(p.text.endswith("।") for p in passages)
