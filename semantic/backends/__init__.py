"""Embedding backends, chosen by import string in ``SEMANTIC["BACKEND"]``."""

from __future__ import annotations

from functools import lru_cache

from semantic.backends.base import EmbeddingBackend, EmbeddingError, Vector

__all__ = ["EmbeddingBackend", "EmbeddingError", "Vector", "get_backend"]


@lru_cache(maxsize=1)
def get_backend() -> EmbeddingBackend:
    """The configured backend instance (cached until ``SEMANTIC`` changes)."""
    from semantic.conf import semantic_settings as conf

    backend_class = conf.BACKEND
    return backend_class(model=conf.MODEL, **conf.BACKEND_OPTIONS)
