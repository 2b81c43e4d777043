"""Preparing text for an embedding model, measuring it, and keeping secrets out of messages."""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from functools import lru_cache

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def source_hash(text: str | None) -> str | None:
    """MD5 of the source text; None for no text. Matches PostgreSQL's ``md5()``."""
    if not text:
        return None
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


def clean(text: str, max_chars: int) -> str:
    """Text safe to send: no NUL or control bytes, no lone surrogates, at most ``max_chars``.

    Returns ``""`` for text with nothing but whitespace, which is never sent.
    """
    return sanitize(text).strip()[:max_chars]


def sanitize(text: str) -> str:
    """``text`` with control characters and lone surrogates replaced one for one.

    Every character keeps its position, so offsets found in the result (where a
    passage starts and ends) are offsets in the text as stored.
    """
    return _CONTROL.sub(" ", storable(text))


def weighted_length(text: str) -> int:
    """``text``'s size in English-equivalent characters (see :func:`char_weight`).

    Input limits, passage sizes and token estimates are stated in characters of
    English text, about four a token; this is the measure that keeps them true for
    other scripts.
    """
    if text.isascii():
        return len(text)
    return sum(map(char_weight, text))


def weighted_prefix(text: str) -> list[int]:
    """The weighted length of ``text[:i]`` for every ``i`` from 0 to ``len(text)``.

    The weighted length of ``text[start:end]`` is ``prefix[end] - prefix[start]``, and,
    every character weighing at least 1, the list strictly increases, so ``bisect``
    finds where a stretch of a given weighted length ends.
    """
    if text.isascii():
        return list(range(len(text) + 1))
    return list(itertools.accumulate(map(char_weight, text), initial=0))


@lru_cache(maxsize=8192)
def char_weight(char: str) -> int:
    """How many English characters one character of ``char``'s script is worth, in tokens.

    Tokenizers learnt mostly from English make about one token of four English
    characters, but about one of each CJK character, kana, hangul syllable or emoji
    (``unicodedata.east_asian_width`` "W" or "F", fullwidth forms included): those
    weigh 4. Letters of the other scripts that are not Latin (Unicode category ``L*``
    from U+0370 on, Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai and so on, whose
    Unicode name does not begin with ``LATIN``) take about two of the characters a
    token that English does: they weigh 2. Everything else weighs 1: ASCII, Latin
    letters with accents, punctuation (curly quotes, dashes), digits, combining marks
    and spaces, so English and other Latin-script text measures exactly its length.

    These weights are a conservative estimate, not a measurement of Gemini's
    tokenizer (none is available offline); the local model's tokenizer makes about
    the figures given in docs/benchmarks.md. Erring high is the safe side: a passage
    cut too small costs a few more requests, while one cut too large is silently
    truncated by the model, and its end is never embedded.
    """
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 4
    if (
        ord(char) >= 0x370
        and unicodedata.category(char).startswith("L")
        and not unicodedata.name(char, "").startswith("LATIN")
    ):
        return 2
    return 1


def redact(message: str, *secrets: str | None) -> str:
    """``message`` with every secret replaced by ``[redacted]``.

    Each secret is also redacted without surrounding whitespace: a key configured as
    ``" AIza... "`` is sent (and echoed back by the API) stripped.
    """
    for secret in secrets:
        for form in (secret, secret and secret.strip()):
            if form:
                message = message.replace(form, "[redacted]")
    return message


def storable(text: str) -> str:
    """``text`` with only what a PostgreSQL ``text`` column cannot hold replaced, one for one.

    NUL and lone surrogates go; form feeds, escapes and other controls stay, so a
    passage stored this way is the slice of its row's text that users look it up by.
    """
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", " ")
