"""One rate limit for every worker and command that shares an API key.

The count lives in the database (``semantic.RateLimit``), so it holds across
processes and machines. ``SEMANTIC["REQUESTS_PER_MINUTE"]`` and
``SEMANTIC["TOKENS_PER_MINUTE"]`` cap what is sent per window
(``RATE_LIMIT_WINDOW`` seconds, 60); a 429 answer with ``Retry-After`` pauses every
process sharing the key until then, not only the one that got it.
"""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from semantic.backends import EmbeddingBackend
from semantic.conf import semantic_settings as conf
from semantic.models import RateLimit

#: Longest single wait, so a worker re-reads the shared state now and then.
MAX_SLEEP = 5.0


def limit_key(backend: EmbeddingBackend) -> str:
    secret = getattr(backend, "api_key", None) or ""
    digest = hashlib.sha256(f"{backend.model_id}|{secret}".encode()).hexdigest()[:32]
    return f"{backend.name}:{digest}"


def acquire(backend: EmbeddingBackend, *, tokens: int) -> float:
    """Wait until one more request of ``tokens`` tokens may be sent; returns seconds waited."""
    key = limit_key(backend)
    waited = 0.0
    while True:
        wait = _try_acquire(key, tokens)
        if wait <= 0:
            return waited
        time.sleep(min(wait, MAX_SLEEP))
        waited += min(wait, MAX_SLEEP)


def _try_acquire(key: str, tokens: int) -> float:
    """Count the request and return 0, or return how long to wait before trying again."""
    now = timezone.now()
    window = timedelta(seconds=conf.RATE_LIMIT_WINDOW)
    with transaction.atomic():
        state, _ = RateLimit.objects.select_for_update().get_or_create(key=key, defaults={"window_start": now})
        if state.paused_until and state.paused_until > now:
            return (state.paused_until - now).total_seconds()
        if now - state.window_start >= window:
            state.window_start, state.requests, state.tokens = now, 0, 0
        over_requests = conf.REQUESTS_PER_MINUTE and state.requests + 1 > conf.REQUESTS_PER_MINUTE
        over_tokens = conf.TOKENS_PER_MINUTE and state.tokens and state.tokens + tokens > conf.TOKENS_PER_MINUTE
        if over_requests or over_tokens:
            return (state.window_start + window - now).total_seconds()
        state.requests += 1
        state.tokens += tokens
        state.save()
    return 0.0


def pause(backend: EmbeddingBackend, seconds: float) -> None:
    """Stop every process sharing this key from sending for ``seconds`` (after a 429)."""
    key = limit_key(backend)
    until = timezone.now() + timedelta(seconds=seconds)
    with transaction.atomic():
        state, _ = RateLimit.objects.select_for_update().get_or_create(
            key=key, defaults={"window_start": timezone.now()}
        )
        if not state.paused_until or state.paused_until < until:
            state.paused_until = until
            state.save(update_fields=["paused_until"])


def try_acquire(backend: EmbeddingBackend, *, tokens: int) -> float:
    """Count one request of ``tokens`` tokens and return 0 if it may be sent now; else the seconds to wait.

    For callers that must not wait, such as a search inside a web request.
    """
    return _try_acquire(limit_key(backend), tokens)
