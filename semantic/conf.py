"""The ``SEMANTIC`` settings dict, read lazily.

Like Django REST framework's ``api_settings``: every key has a default, values are
read from ``settings.SEMANTIC`` on first access and cached, and the cache is dropped
when the setting changes, so ``override_settings(SEMANTIC=...)`` works in tests.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

GEMINI_BACKEND = "semantic.backends.gemini.GeminiBackend"
LOCAL_BACKEND = "semantic.backends.local.LocalBackend"

DEFAULTS: dict[str, Any] = {
    # Import string of the backend class. None: Gemini when an API key is configured,
    # otherwise the local sentence-transformers model.
    "BACKEND": None,
    # Extra keyword arguments for the backend class.
    "BACKEND_OPTIONS": {},
    # Gemini API key. None: the GEMINI_API_KEY or GOOGLE_API_KEY environment variable.
    "API_KEY": None,
    # Model name. None: the backend's default (gemini-embedding-001, all-MiniLM-L6-v2).
    "MODEL": None,
    # Override the Gemini API base URL (proxies, tests).
    "BASE_URL": None,
    # Seconds before one embedding request of the worker (or a command) is abandoned.
    "TIMEOUT": 30.0,
    # The same for a request a search makes while a web request waits: well under the web
    # server's own time-out (gunicorn's and Heroku's are 30 s), so the page says "unavailable".
    "SEARCH_TIMEOUT": 5.0,
    # Run embedding inline when the saving transaction commits, instead of through django-q2
    # (scripts; a test that never commits must run its on-commit callbacks: README, Testing).
    "SYNC": False,
    # Rows per API request; None: the backend's cap.
    "BATCH_SIZE": None,
    # Attempts at one batch before its rows are recorded as failed.
    "MAX_ATTEMPTS": 4,
    # Seconds before the first retry; doubles each attempt (capped by MAX_BACKOFF).
    "BACKOFF": 1.0,
    "MAX_BACKOFF": 60.0,
    # django-q2 cluster name to queue tasks on; None: the default cluster.
    "QUEUE": None,
    # similar_to() with other filters compares the filtered rows exactly when the planner
    # estimates at most this many; above it, it walks the HNSW index with pgvector's iterative scan.
    "EXACT_SEARCH_MAX_ROWS": 20_000,
    # The admin's Topics page groups at most this many rows of the list, a sample (and says so):
    # k-means runs in the web request, and on 100,000 rows takes longer than a web server waits.
    "TOPICS_MAX_ROWS": 10_000,
    # Shared by every worker and command using the same key; None: no cap.
    "REQUESTS_PER_MINUTE": None,
    "TOKENS_PER_MINUTE": None,
    "RATE_LIMIT_WINDOW": 60,
    # Django cache holding query embeddings; None: no caching.
    "CACHE": "default",
    # USD per million input tokens for semantic_embed --dry-run; None: the built-in price.
    "PRICE_PER_MILLION_TOKENS": None,
    # Minutes between django-q2 sweeps of rows the save hook did not see; None: no schedule.
    "SWEEP_MINUTES": 5,
}

IMPORT_STRINGS = {"BACKEND"}

#: Keys that were once settings, and what to do instead (reported by a system check).
REMOVED = {
    "DIMENSIONS": "Set dimensions= on each EmbeddingField instead: a field's size is part of its migration, "
    "so it may not depend on settings that differ between machines. Fields without it store 384.",
}

ENVIRONMENT_KEYS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


class SemanticSettings:
    """Attribute access to ``settings.SEMANTIC`` with defaults."""

    def __init__(self) -> None:
        self._cached: set[str] = set()
        self._user: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user is None:
            self._user = dict(getattr(settings, "SEMANTIC", None) or {})
        return self._user

    def __getattr__(self, attr: str) -> Any:
        if attr not in DEFAULTS:
            raise AttributeError(f"Invalid SEMANTIC setting: {attr!r}")
        value = self.user_settings.get(attr, DEFAULTS[attr])
        if attr == "API_KEY":
            value = _api_key(value)
        if attr == "BACKEND" and value is None:
            value = GEMINI_BACKEND if self.API_KEY else LOCAL_BACKEND
        if attr in IMPORT_STRINGS and isinstance(value, str):
            value = perform_import(value, attr)
        self._cached.add(attr)
        setattr(self, attr, value)
        return value

    def reload(self) -> None:
        for attr in self._cached:
            delattr(self, attr)
        self._cached.clear()
        self._user = None


def _api_key(value: str | None) -> str | None:
    """The configured key, else the environment's, stripped as google-genai sends it (and
    so as an API error would echo it, for redaction to find)."""
    if not (value and value.strip()):
        value = next((os.environ[k] for k in ENVIRONMENT_KEYS if os.environ.get(k, "").strip()), None)
    return value.strip() if value else None


def perform_import(value: str, setting_name: str) -> Any:
    try:
        return import_string(value)
    except ImportError as exc:
        raise ImportError(f"Could not import {value!r} for setting SEMANTIC[{setting_name!r}]: {exc}") from exc


semantic_settings = SemanticSettings()


def reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "SEMANTIC":
        semantic_settings.reload()


setting_changed.connect(reload_settings)
