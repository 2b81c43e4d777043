"""Splitting a long text into passages an embedding model reads whole.

A model reads a bounded input (all-MiniLM-L6-v2: 256 word pieces; Gemini's
embedding model: 2,048 tokens) and ignores the rest, so one vector per row says
nothing about a long article's later paragraphs. ``split()`` cuts the text into
passages of at most ``max_chars`` characters, each embedded on its own.

Sizes are English-equivalent characters (``semantic.text.weighted_length``): a
character of English or another Latin-script text counts 1, a Cyrillic, Greek,
Arabic or Devanagari letter 2, a Chinese or Japanese character, a hangul syllable or
an emoji 4, about the tokens each costs. So a limit set from a model's tokens at about
four English characters a token holds for any script, and Latin-script text is cut
exactly where character counts cut it.

Where it cuts, in order of preference: between paragraphs (a blank line), between
sentences (``.``, ``!``, ``?`` or the Devanagari danda then whitespace, or their CJK
forms, with or without it), between words, and only inside a word longer than a
passage, and then between whole characters (a letter with its accents, an emoji
sequence). Paragraphs are not packed greedily
into full passages: a paragraph that fits is a passage of its own, and only short
ones (headings, list items, a last line) join a neighbour. So a passage's bounds
depend on its own paragraphs and not on everything before it, and editing one
paragraph leaves the other passages' text, and so their vectors, as they were.

Each passage after the first also repeats up to ``overlap`` characters of the text
before it, starting at a sentence (or else a word) boundary, so a statement that
straddles a cut is whole in one of the two passages.

Offsets are character positions in the text given, so a passage can be shown in
its place. No tokenizer is used: the weights estimate tokens (conservatively, see
``semantic.text.char_weight``), and sizes are set per backend from its input limit
(``EmbeddingBackend.passage_chars``).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from semantic.text import weighted_prefix

#: ZERO WIDTH JOINER: the characters on either side of it are one (emoji sequences).
ZWJ = "\u200d"
#: A blank line, however it is spaced.
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
#: The end of a sentence: its mark, any closing quotes or brackets, then whitespace; or,
#: in Chinese and Japanese, which put no space between sentences, right after a full-width
#: mark and the closing quote or bracket that follows it (kept with its sentence).
SENTENCE_BREAK = re.compile(
    r"(?<=[.!?\u2026\u0964\u0965\u3002\uff01\uff1f])[\"'\u201d\u2019)\]]*\s+"
    r"|(?<=[\u3002\uff01\uff1f])(?![\s\u201d\u2019\u300d\u300f\uff09])"
    r"|(?<=[\u3002\uff01\uff1f][\u201d\u2019\u300d\u300f\uff09])(?!\s)"
)
#: Where a passage may start when it repeats the text before it: a sentence's or a paragraph's start.
SENTENCE_START = re.compile(f"{SENTENCE_BREAK.pattern}|{PARAGRAPH_BREAK.pattern}")
#: Where a sentence's line of text may be broken.
WORD_BREAK = re.compile(r"\s+")
#: A passage shorter than this share of the passage size joins a neighbour when they fit together.
SHORT_SHARE = 4
#: Smallest passage size accepted: below it, passages are fragments of sentences.
MIN_PASSAGE_CHARS = 50


@dataclass(frozen=True)
class Passage:
    """One passage: ``text`` is ``source[start:end]``."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Passages:
    """How an EmbeddingField splits its text: ``EmbeddingField(..., passages=Passages(max_chars=1000))``.

    ``max_chars`` defaults to the backend's ``passage_chars`` (what its model reads
    whole); ``overlap`` to an eighth of the passage size. ``passages=True`` means
    ``Passages()``. Migrations record the values as a plain dict, never this class.
    """

    max_chars: int | None = None
    overlap: int | None = None

    def __post_init__(self) -> None:
        if self.max_chars is not None:
            _check_int(self.max_chars, "max_chars", MIN_PASSAGE_CHARS)
        if self.overlap is not None:
            _check_int(self.overlap, "overlap", 0)
            if self.max_chars is not None and self.overlap * 2 > self.max_chars:
                raise ValueError(f"Passages overlap ({self.overlap}) must be at most half of max_chars.")

    @classmethod
    def from_option(cls, value: Any) -> Passages | None:
        """The field's ``passages=`` value as options: True, False/None, a Passages or a dict."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict) and set(value) <= {"max_chars", "overlap"}:
            return cls(**value)
        raise ValueError(
            f"EmbeddingField passages must be True, Passages(max_chars=..., overlap=...) or a dict of those, "
            f"not {value!r}."
        )

    def as_option(self) -> bool | dict[str, int]:
        """What the field deconstructs to: True for the defaults, else a dict of what was set."""
        values = {
            name: value
            for name, value in (("max_chars", self.max_chars), ("overlap", self.overlap))
            if value is not None
        }
        return values or True

    def sizes(self, default_chars: int) -> tuple[int, int]:
        """``(max_chars, overlap)``, with the backend's passage size when none was set."""
        max_chars = self.max_chars or max(default_chars, MIN_PASSAGE_CHARS)
        overlap = self.overlap if self.overlap is not None else max_chars // 8
        return max_chars, min(overlap, max_chars // 2)


def split(text: str, *, max_chars: int, overlap: int = 0) -> list[Passage]:
    """``text`` as passages of at most ``max_chars`` English-equivalent characters (see the
    module docstring); ``overlap`` is measured the same way.

    Returns ``[]`` for a text of nothing but whitespace.
    """
    _check_int(max_chars, "max_chars", MIN_PASSAGE_CHARS)
    _check_int(overlap, "overlap", 0)
    if overlap * 2 > max_chars:
        raise ValueError(f"overlap ({overlap}) must be at most half of max_chars ({max_chars}).")
    body = max_chars - overlap
    size = weighted_prefix(text)
    units: list[tuple[int, int]] = []
    for start, end in _parts(text, PARAGRAPH_BREAK, 0, len(text)):
        if size[end] - size[start] <= body:
            units.append((start, end))
        else:
            units += _pack(list(_pieces(text, size, start, end, body)), size, body)
    spans = _join_short(units, size, body)
    passages = []
    for i, (start, end) in enumerate(spans):
        if i and overlap:
            # The earliest character from which the text up to ``start`` weighs at most ``overlap``.
            floor = bisect_left(size, size[start] - overlap)
            start = _overlap_start(text, start, floor=max(spans[i - 1][0], floor))
        passages.append(Passage(start, end, text[start:end]))
    return passages


def _parts(text: str, pattern: re.Pattern[str], start: int, end: int) -> Iterator[tuple[int, int]]:
    """The stretches of ``text[start:end]`` between matches of ``pattern``, without edge whitespace."""
    position = start
    for match in pattern.finditer(text, start, end):
        yield from _trimmed(text, position, match.start())
        position = match.end()
    yield from _trimmed(text, position, end)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        yield start, end


def _pieces(text: str, size: list[int], start: int, end: int, limit: int) -> Iterator[tuple[int, int]]:
    """Sentences of ``text[start:end]``; a sentence over ``limit`` as words, a word over it in cuts.

    ``size`` is the text's :func:`~semantic.text.weighted_prefix`, as in the helpers below.
    """
    for s_start, s_end in _parts(text, SENTENCE_BREAK, start, end):
        if size[s_end] - size[s_start] <= limit:
            yield s_start, s_end
            continue
        for w_start, w_end in _pack(list(_parts(text, WORD_BREAK, s_start, s_end)), size, limit):
            cut = w_start
            while cut < w_end:
                # As many characters as weigh at most ``limit`` (one at least: a limit is never below 25).
                next_cut = min(max(bisect_right(size, size[cut] + limit) - 1, cut + 1), w_end)
                next_cut = _cluster_start(text, cut, next_cut)
                yield cut, next_cut
                cut = next_cut


def _cluster_start(text: str, start: int, cut: int) -> int:
    """``cut`` moved back to the start of the character it falls inside (a letter and its
    combining marks, an emoji sequence joined by ZWJ, with its skin tone or variation
    selector), unless that is ``start``: a passage begins and ends on whole characters."""
    boundary = cut
    while start + 1 < boundary < len(text) and _joined(text, boundary):
        boundary -= 1
    return cut if boundary == start + 1 and _joined(text, boundary) else boundary


def _joined(text: str, i: int) -> bool:
    """Whether ``text[i]`` belongs to the character before it."""
    code = ord(text[i])
    return (
        text[i] == ZWJ
        or text[i - 1] == ZWJ
        or unicodedata.category(text[i]) in ("Mn", "Mc", "Me")
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
    )


def _pack(pieces: list[tuple[int, int]], size: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive pieces joined while the joined stretch stays within ``limit``."""
    packed: list[tuple[int, int]] = []
    for start, end in pieces:
        if packed and size[end] - size[packed[-1][0]] <= limit:
            packed[-1] = (packed[-1][0], end)
        else:
            packed.append((start, end))
    return packed


def _join_short(units: list[tuple[int, int]], size: list[int], limit: int) -> list[tuple[int, int]]:
    """Units with each short one joined to the one before, or else to the one after, where they fit."""
    short = limit // SHORT_SHARE
    joined: list[tuple[int, int]] = []
    for start, end in units:
        if joined:
            previous_start, previous_end = joined[-1]
            either_short = size[previous_end] - size[previous_start] < short or size[end] - size[start] < short
            if either_short and size[end] - size[previous_start] <= limit:
                joined[-1] = (previous_start, end)
                continue
        joined.append((start, end))
    return joined


def _overlap_start(text: str, start: int, *, floor: int) -> int:
    """The earliest sentence (else word) start in ``text[floor:start]``, or ``start`` if none."""
    for pattern in (SENTENCE_START, WORD_BREAK):
        for match in pattern.finditer(text, floor, start):
            if match.end() < start:
                return match.end()
    return start


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Passages {name} must be an integer of at least {minimum}, not {value!r}.")
