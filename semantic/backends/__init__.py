"""Embedding backends, chosen by import string in ``SEMANTIC["BACKEND"]``."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.core.signals import setting_changed

from semantic.backends.base import (
    BAD_INPUT,
    CONFIG,
    FIELD,
    TRANSIENT,
    EmbeddingBackend,
    EmbeddingError,
    Vector,
    malformed,
)

__all__ = [
    "BAD_INPUT",
    "CONFIG",
    "FIELD",
    "TRANSIENT",
    "EmbeddingBackend",
    "EmbeddingError",
    "Vector",
    "get_backend",
    "malformed",
]


@cache
def get_backend(model: str | None = None) -> EmbeddingBackend:
    """The configured backend for ``model`` (default ``SEMANTIC["MODEL"]``), cached until ``SEMANTIC`` changes."""
    from semantic.conf import semantic_settings as conf

    backend_class = conf.BACKEND
    return backend_class(model=model or conf.MODEL, **conf.BACKEND_OPTIONS)


def _forget_backends(*, setting: str, **kwargs: Any) -> None:
    if setting == "SEMANTIC":
        get_backend.cache_clear()


setting_changed.connect(_forget_backends)
