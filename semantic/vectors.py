"""Vectors for arbitrary texts, straight from the backend, with a cache for queries.

This is the path a search takes inside a web request, so it never waits: when the
shared rate limit (:mod:`semantic.ratelimit`) is spent or paused, or the API fails,
it raises :class:`SearchUnavailable` at once and the view can say "try again later".
Each request gets ``SEARCH_TIMEOUT`` seconds, not the worker's ``TIMEOUT``, and is
made once: a web server kills a request that waits as long as its own time-out.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Sequence
from contextlib import nullcontext

from django.core.cache import caches

from semantic.backends import (
    CONFIG,
    FIELD,
    TRANSIENT,
    EmbeddingBackend,
    EmbeddingError,
    Vector,
    get_backend,
    malformed,
    redact_keys,
)
from semantic.backends.base import time_limit
from semantic.conf import semantic_settings as conf
from semantic.fields import DEFAULT_DIMENSIONS
from semantic.text import clean

#: Query vectors are kept this many seconds in the cache named by SEMANTIC["CACHE"].
CACHE_TIMEOUT = 24 * 60 * 60
#: Longest pause a query-time 429 imposes on every process sharing the key.
MAX_PAUSE = 3600.0


class EmptyQuery(ValueError):
    """The text has nothing to embed: empty, or only whitespace, control and format characters.

    A ``ValueError``; a search view treats it as "no query".
    """

    MESSAGE = (
        "Cannot embed an empty text "
        "(nothing is left once whitespace, control and invisible format characters are removed)."
    )
    #: For a search that embeds nothing (a keyword search, a keyword-only hybrid()).
    SEARCH_MESSAGE = (
        "Cannot search for an empty text "
        "(nothing is left once whitespace, control and invisible format characters are removed)."
    )


#: Unicode categories with nothing to search: controls (C0 and C1), format characters
#: (zero-width space and joiners, the byte order mark, left-to-right and right-to-left
#: marks, the soft hyphen, the word joiner) and lone surrogates.
INVISIBLE = frozenset({"Cc", "Cf", "Cs"})


def blank(text: str) -> bool:
    """True for a text with nothing to search: only whitespace, control and format characters.

    Whitespace of every script counts (the ideographic space U+3000 a CJK input method
    types, NBSP, em spaces), and so do C1 controls, so ``?q=%E3%80%80`` is "no query" on
    every search, keyword or meaning, rather than an error on some of them. So do the
    characters nobody sees (:data:`INVISIBLE`): a pasted zero-width space, a BOM, or the
    mark an RTL keyboard types would otherwise be embedded and answered with whatever
    rows lie nearest.
    """
    return all(char.isspace() or unicodedata.category(char) in INVISIBLE for char in text)


class SearchUnavailable(EmbeddingError):
    """The text cannot be embedded right now; retry later.

    Raised by :func:`embed`, ``similar_to()`` and ``duplicates_of()`` when the
    embedding API fails or answers 429, or when the shared rate limit is spent for
    this window. ``retry_after`` is the number of seconds to wait, when known. A view
    catches it to show a friendly message instead of an error page.

    When a setting must change first (the API refused the key, the model is unknown, the
    backend cannot make the field's size),
    ``kind`` is ``"config"``, the message is the problem and what to fix, as the worker
    reports it, and ``retry_after`` is None: no wait makes it work.
    """

    RATE_LIMITED = "Search is busy: the embedding rate limit is reached. Try again in {seconds} s."
    FAILED = "Search is unavailable: the embedding API failed ({reason}). Try again later."
    CONFIGURATION = "Search is unavailable until a setting is fixed: {problem}"

    def __init__(self, message: str, *, retry_after: float | None = None, kind: str = TRANSIENT) -> None:
        super().__init__(message, kind=kind, retry_after=retry_after)


def embed(
    texts: Sequence[str],
    *,
    task_type: str = "SEMANTIC_SIMILARITY",
    dimensions: int | None = None,
    model: str | None = None,
    cache: bool = True,
    wait: bool = False,
) -> list[Vector]:
    """Embed ``texts`` with the configured backend (and ``model``), one vector per text.

    Without ``dimensions`` the vectors have the size of a field without ``dimensions=``
    (384) whatever the backend, so a vector made on a machine without a key can be
    searched with on one with a key; only a backend that cannot make that size answers
    with its own ``default_dimensions``. Pass the field's ``dimensions`` to compare with
    a field that sets its own.
    Vectors are cached (Django cache ``SEMANTIC["CACHE"]``) under the backend's model,
    the task type (when the backend's vectors depend on it), the size and the text, so
    repeating a search costs no API call.
    Texts not in the cache go through the shared rate limit: by default a request
    the limit does not allow now raises :class:`SearchUnavailable` at once, and a
    request the API does not answer within ``SEARCH_TIMEOUT`` seconds does too (a web
    request must not hang for a minute); a script embedding many texts passes
    ``wait=True`` to wait for its turn, and up to ``TIMEOUT`` for each answer, instead.
    Raises :class:`EmptyQuery` for an empty text and :class:`SearchUnavailable` when the
    backend fails.
    """
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of texts; wrap a single text in a list.")
    backend = get_backend(model)
    dimensions = dimensions or default_size(backend)
    cleaned = [clean(text, backend.max_input_chars) for text in texts]
    if not all(cleaned) or any(map(blank, texts)):
        raise EmptyQuery(EmptyQuery.MESSAGE)
    store = caches[conf.CACHE] if cache and conf.CACHE else None
    cached_as = task_type if backend.uses_task_types else ""
    keys = [_key(backend.model_id, cached_as, dimensions, text) for text in cleaned]
    found = store.get_many(keys) if store else {}
    # A bad vector cached before it was checked for (by an older release) is asked for again.
    found = {key: vector for key, vector in found.items() if unusable(vector, dimensions) is None}
    missing = [i for i, key in enumerate(keys) if key not in found]
    for start in range(0, len(missing), backend.max_batch_size):
        chunk = missing[start : start + backend.max_batch_size]
        texts_to_send = [cleaned[i] for i in chunk]
        vectors = _request(backend, texts_to_send, task_type=task_type, dimensions=dimensions, wait=wait)
        fresh = {keys[i]: list(vector) for i, vector in zip(chunk, vectors)}
        found.update(fresh)
        if store:
            store.set_many(fresh, CACHE_TIMEOUT)
    return [found[key] for key in keys]


def default_size(backend: EmbeddingBackend) -> int:
    """The size :func:`embed` makes when not told: the fields' default, if the backend can make it."""
    return DEFAULT_DIMENSIONS if DEFAULT_DIMENSIONS in backend.supported_dimensions else backend.default_dimensions


def _request(
    backend: EmbeddingBackend, texts: list[str], *, task_type: str, dimensions: int, wait: bool
) -> list[Vector]:
    """One request under the shared rate limit, failing fast unless told to ``wait``."""
    # Imported here: semantic.ratelimit reads a model, and this module is imported with the package.
    from semantic import ratelimit

    tokens = ratelimit.estimated_tokens(texts)
    try:
        if wait:
            ratelimit.acquire(backend, tokens=tokens)
        elif (seconds := ratelimit.try_acquire(backend, tokens=tokens)) > 0:
            message = SearchUnavailable.RATE_LIMITED.format(seconds=math.ceil(seconds))
            raise SearchUnavailable(message, retry_after=seconds)
    except ratelimit.Paused as paused:
        # A worker met a bad key or model: say so, as it does, not "busy" (the pause is only how it stops).
        raise SearchUnavailable(SearchUnavailable.CONFIGURATION.format(problem=paused.problem), kind=CONFIG) from None
    try:
        with nullcontext() if wait else time_limit(conf.SEARCH_TIMEOUT):
            vectors = backend.embed(texts, task_type=task_type, dimensions=dimensions)
    except EmbeddingError as exc:
        reason = redact_keys(str(exc), backend)
        # A field the backend cannot embed (a size it does not make) is a setting too: no wait fixes it.
        if exc.kind in (CONFIG, FIELD):
            raise SearchUnavailable(SearchUnavailable.CONFIGURATION.format(problem=reason), kind=CONFIG) from None
        retry_after = exc.retry_after
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            retry_after = min(retry_after, MAX_PAUSE)
            ratelimit.pause(backend, retry_after)
        # "from None": the original error's frames may hold the key; its message is redacted above.
        raise SearchUnavailable(SearchUnavailable.FAILED.format(reason=reason), retry_after=retry_after) from None
    if len(vectors) != len(texts):
        raise SearchUnavailable(
            SearchUnavailable.FAILED.format(reason=f"{len(vectors)} vectors for {len(texts)} texts")
        )
    for vector in vectors:
        # Never cached, never sent to PostgreSQL (which refuses NaN, and ranks every row NaN against zeros).
        if problem := unusable(vector, dimensions):
            raise SearchUnavailable(SearchUnavailable.FAILED.format(reason=f"the backend sent {problem}"))
    return vectors


def unusable(vector: Sequence[float], dimensions: int) -> str | None:
    """Why a vector from the backend (or the cache) cannot be searched with, or None."""
    problem = malformed(vector)
    if problem is None and len(vector) != dimensions:
        problem = f"a {len(vector)}-dimensional vector for {dimensions} dimensions"
    return problem


def _key(model_id: str, task_type: str, dimensions: int, text: str) -> str:
    digest = hashlib.sha256(f"{model_id}|{task_type}|{dimensions}|{text}".encode()).hexdigest()
    return f"semantic:query:{digest}"


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, with the nine significant digits that round-trip a float32.

    pgvector stores float32 (``vector``) or float16 (``halfvec``), so more digits carry
    nothing; one ``%`` over the whole vector is three times faster than ``str()`` per
    element and makes a third less text to send and parse (docs/benchmarks.md).
    """
    return "[" + ",".join(["%.9g"] * len(vector)) % tuple(vector) + "]"
