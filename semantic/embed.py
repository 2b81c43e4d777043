"""Vectors for arbitrary texts, straight from the backend, with a cache for queries."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from django.core.cache import caches

from semantic.backends import EmbeddingError, Vector, get_backend
from semantic.conf import semantic_settings as conf
from semantic.text import clean

#: Query vectors are kept this many seconds in the cache named by SEMANTIC["CACHE"].
CACHE_TIMEOUT = 24 * 60 * 60


def embed(
    texts: Sequence[str],
    *,
    task_type: str = "SEMANTIC_SIMILARITY",
    dimensions: int | None = None,
    model: str | None = None,
    cache: bool = True,
) -> list[Vector]:
    """Embed ``texts`` with the configured backend (and ``model``), one vector per text.

    Vectors are cached (Django cache ``SEMANTIC["CACHE"]``) under the backend's model,
    the task type, the size and the text, so repeating a search costs no API call.
    Raises ``ValueError`` for an empty text and :class:`EmbeddingError` when the
    backend fails.
    """
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of texts; wrap a single text in a list.")
    backend = get_backend(model)
    dimensions = dimensions or backend.default_dimensions
    cleaned = [clean(text, backend.max_input_chars) for text in texts]
    if not all(cleaned):
        raise ValueError("Cannot embed an empty text.")
    store = caches[conf.CACHE] if cache and conf.CACHE else None
    keys = [_key(backend.model_id, task_type, dimensions, text) for text in cleaned]
    found = store.get_many(keys) if store else {}
    missing = [i for i, key in enumerate(keys) if key not in found]
    for start in range(0, len(missing), backend.max_batch_size):
        chunk = missing[start : start + backend.max_batch_size]
        vectors = backend.embed([cleaned[i] for i in chunk], task_type=task_type, dimensions=dimensions)
        if len(vectors) != len(chunk):
            raise EmbeddingError(f"The backend returned {len(vectors)} vectors for {len(chunk)} texts.", transient=True)
        fresh = {keys[i]: list(vector) for i, vector in zip(chunk, vectors)}
        found.update(fresh)
        if store:
            store.set_many(fresh, CACHE_TIMEOUT)
    return [found[key] for key in keys]


def _key(model_id: str, task_type: str, dimensions: int, text: str) -> str:
    digest = hashlib.sha256(f"{model_id}|{task_type}|{dimensions}|{text}".encode()).hexdigest()
    return f"semantic:query:{digest}"
