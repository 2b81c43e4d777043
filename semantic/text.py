"""Preparing text for an embedding model, and keeping secrets out of messages."""

from __future__ import annotations

import hashlib
import re

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
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", text)


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
