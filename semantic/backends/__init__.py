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
    "redact_keys",
]


@cache
def get_backend(model: str | None = None) -> EmbeddingBackend:
    """The configured backend for ``model`` (default ``SEMANTIC["MODEL"]``), cached until ``SEMANTIC`` changes."""
    from semantic.conf import semantic_settings as conf

    backend_class = conf.BACKEND
    return backend_class(model=model or conf.MODEL, **conf.BACKEND_OPTIONS)


def redact_keys(message: str, backend: Any = None) -> str:
    """``message`` without any API key it could hold: ``backend``'s own, and every one the
    settings name (``SEMANTIC["API_KEY"]`` or the environment, ``BACKEND_OPTIONS``)."""
    from semantic.conf import semantic_settings as conf
    from semantic.text import redact

    return redact(message, getattr(backend, "api_key", None), conf.API_KEY, conf.BACKEND_OPTIONS.get("api_key"))


def _forget_backends(*, setting: str, **kwargs: Any) -> None:
    if setting == "SEMANTIC":
        get_backend.cache_clear()


setting_changed.connect(_forget_backends)
