"""One rate limit for every worker and command that shares an API key.

The count lives in the database (``semantic.RateLimit``), so it holds across
processes and machines, and, with schemas per tenant, in the public schema, so it holds
across tenants (:func:`semantic.tenancy.public`). ``SEMANTIC["REQUESTS_PER_MINUTE"]`` and
``SEMANTIC["TOKENS_PER_MINUTE"]`` cap what is sent per window
(``RATE_LIMIT_WINDOW`` seconds, 60); a 429 answer that says how long to wait
(``Retry-After``, or Gemini's ``RetryInfo`` in the body) pauses every process sharing
the key until then, not only the one that got it.

A configuration problem (a bad key, no permission, an unknown model) is recorded on
the same row and pauses the key for ``CONFIG_PAUSE`` seconds: retrying sooner would
only hammer the API with requests that cannot succeed. :func:`configuration_problem`
reads it for status pages. A new key or model is a new row, so fixing the setting
lifts the pause at once; a fix on the API's side (enabling the API for the project)
is found by the first request after the pause.

Requests are counted only while a limit is set: with neither (the default) a request
only reads whether the key is paused, with no lock and no write.

The key's row is locked while it is counted, in a transaction of its own
(:func:`own_transaction`): inside a caller's transaction (``ATOMIC_REQUESTS``, a
search in ``atomic()``) a nested ``atomic()`` is only a savepoint, and the lock would
last until the caller commits, through the API call and the rest of the request,
while every other search and worker on the key waited for it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from semantic import tenancy
from semantic.backends import EmbeddingBackend, get_backend
from semantic.backends.base import MAX_RETRY_AFTER
from semantic.conf import semantic_settings as conf
from semantic.models import RateLimit
from semantic.text import weighted_length

#: Longest single wait, so a worker re-reads the shared state now and then.
MAX_SLEEP = 5.0
#: Seconds every process on a key stops sending after a configuration error.
CONFIG_PAUSE = 300.0
#: About this many characters of English make a token: how a request's cost against
#: ``TOKENS_PER_MINUTE`` is estimated, from texts' English-equivalent size
#: (:func:`semantic.text.weighted_length`: a Chinese character is about a token of its own).
CHARS_PER_TOKEN = 4
#: Suffix of the alias under which a connection of the rate limit's own is known, while it is used.
OWN_CONNECTION_SUFFIX = ":semantic-ratelimit"


class Clock:
    """Where the rate limit reads the time and waits.

    Windows and pauses are arithmetic on this clock, so tests install one they move by
    hand (:func:`use_clock`) and check the arithmetic without waiting or racing a
    loaded machine.
    """

    def now(self) -> datetime:
        return timezone.now()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_clock = Clock()


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Run the rate limit on ``clock`` inside the block (a test hook)."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield clock
    finally:
        _clock = previous


class Paused(Exception):
    """Every process on this key must wait longer than the caller is willing to."""

    def __init__(self, seconds: float, problem: str) -> None:
        self.seconds = seconds
        self.problem = problem
        reason = problem or "the API asked every client on this key to wait (a 429 that said how long)"
        super().__init__(f"Sending is paused for another {seconds:.0f} s: {reason}")


def limit_key(backend: EmbeddingBackend) -> str:
    secret = getattr(backend, "api_key", None) or ""
    digest = hashlib.sha256(f"{backend.model_id}|{secret}".encode()).hexdigest()[:32]
    return f"{backend.name}:{digest}"


def acquire(backend: EmbeddingBackend, *, tokens: int, max_pause: float | None = None) -> float:
    """Wait until one more request of ``tokens`` tokens may be sent; returns seconds waited.

    Raises :class:`Paused` instead of waiting when the key is paused for a
    configuration problem, or for longer than ``max_pause`` seconds: a worker should
    not sleep through an hour's ``Retry-After`` holding its rows.
    """
    key = limit_key(backend)
    waited = 0.0
    while True:
        wait, paused, problem = _try_acquire(key, tokens)
        if wait <= 0:
            return waited
        if paused and (problem or (max_pause is not None and wait > max_pause)):
            raise Paused(wait, problem)
        _clock.sleep(min(wait, MAX_SLEEP))
        waited += min(wait, MAX_SLEEP)


def estimated_tokens(texts: Iterable[str]) -> int:
    """What a request of ``texts`` costs against ``TOKENS_PER_MINUTE``, about."""
    return sum(weighted_length(text) for text in texts) // CHARS_PER_TOKEN + 1


def fitting(texts: Sequence[str]) -> list[int]:
    """How many of ``texts``, in order, each request takes so that none costs more than
    ``TOKENS_PER_MINUTE`` (a text that costs more goes alone).

    :func:`acquire` lets any request into an empty window, so a request larger than the
    budget would send several windows' worth at once.
    """
    budget = conf.TOKENS_PER_MINUTE
    sizes = [0]
    start = 0
    for end in range(len(texts)):
        if sizes[-1] and budget and estimated_tokens(texts[start : end + 1]) > budget:
            sizes.append(0)
            start = end
        sizes[-1] += 1
    return sizes


def _try_acquire(key: str, tokens: int) -> tuple[float, bool, str]:
    """Count the request and return 0, or return how long to wait before trying again,
    whether that is a pause, and the configuration problem that caused it."""
    now = _clock.now()
    if not (conf.REQUESTS_PER_MINUTE or conf.TOKENS_PER_MINUTE):
        return _paused(key, now)
    window = timedelta(seconds=conf.RATE_LIMIT_WINDOW)
    with own_transaction() as using:
        rows = RateLimit.objects.using(using).select_for_update()
        state, _ = rows.get_or_create(key=key, defaults={"window_start": now})
        if state.paused_until and state.paused_until > now:
            return (state.paused_until - now).total_seconds(), True, state.problem
        if now - state.window_start >= window:
            state.window_start, state.requests, state.tokens = now, 0, 0
        over_requests = conf.REQUESTS_PER_MINUTE and state.requests + 1 > conf.REQUESTS_PER_MINUTE
        over_tokens = conf.TOKENS_PER_MINUTE and state.tokens and state.tokens + tokens > conf.TOKENS_PER_MINUTE
        if over_requests or over_tokens:
            return (state.window_start + window - now).total_seconds(), False, ""
        state.requests += 1
        state.tokens += tokens
        state.save()
    return 0.0, False, ""


def _paused(key: str, now: datetime) -> tuple[float, bool, str]:
    """:func:`_try_acquire` with no limit set: nothing to count, only a pause (a 429's, a
    configuration problem's) to respect. Read, not locked or written: a search costs one
    SELECT, where counting costs a write transaction and, inside a caller's, a connection
    of its own (:func:`own_transaction`)."""
    using = router.db_for_write(RateLimit)
    with tenancy.public(using):
        rows = RateLimit.objects.using(using).filter(key=key, paused_until__gt=now)
        paused = rows.values_list("paused_until", "problem").first()
    if paused is None:
        return 0.0, False, ""
    until, problem = paused
    return (until - now).total_seconds(), True, problem


@contextmanager
def own_transaction() -> Iterator[str]:
    """A transaction that ends with the block, whatever the caller's; yields its alias.

    Outside a transaction of the caller's, that is ``atomic()`` on the thread's own
    connection. Inside one, it is a connection of its own, opened for the block and closed
    after it: kept open per thread, it would outlive the request (and a test's database)
    unseen by Django's ``close_old_connections()``, which knows only ``DATABASES``; a search
    that embeds its text is about to wait for the API anyway. It sees only committed rows,
    which is all this module's rows ever need.
    """
    using = router.db_for_write(RateLimit)
    if not in_callers_transaction(connections[using]):
        with tenancy.public(using), transaction.atomic(using=using):
            yield using
        return
    # A connection of django-tenants' backend starts in the public schema, where the count is kept.
    alias = using + OWN_CONNECTION_SUFFIX
    own = connections.create_connection(using)  # the same settings, a test database's name too
    own.alias = alias  # the ORM, and contrib.postgres on connecting, find it under this name
    connections[alias] = own  # for this thread only: connections are per thread
    try:
        with transaction.atomic(using=alias):
            yield alias
    finally:
        del connections[alias]
        own.close()


def in_callers_transaction(connection: BaseDatabaseWrapper) -> bool:
    """Whether a transaction of the caller's is open on ``connection``.

    Not inside a test case's transaction, even with the test's own ``atomic()`` in it: the
    count stays inside it and is rolled back with the test's rows. Counted on a connection
    of its own, it was committed and met the next tests (a test of the local model read two
    requests where it made one).
    """
    if connection.in_atomic_block:
        return not any(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)
    return not connection.get_autocommit()


def pause(backend: EmbeddingBackend, seconds: float, *, problem: str = "") -> None:
    """Stop every process sharing this key from sending for ``seconds`` (after a 429).

    ``seconds`` is clamped to ``0..MAX_RETRY_AFTER``, whatever a server sent.
    """
    seconds = min(max(seconds, 0.0), MAX_RETRY_AFTER) if seconds == seconds else 0.0
    now = _clock.now()
    until = now + timedelta(seconds=seconds)
    with own_transaction() as using:
        rows = RateLimit.objects.using(using).select_for_update()
        state, _ = rows.get_or_create(key=limit_key(backend), defaults={"window_start": now})
        fields = []
        if not state.paused_until or state.paused_until < until:
            state.paused_until = until
            fields.append("paused_until")
        if problem:
            state.problem, state.problem_at = problem, now
            fields += ["problem", "problem_at"]
        if fields:
            state.save(update_fields=fields)


def report_problem(backend: EmbeddingBackend, message: str) -> None:
    """Record a configuration problem (a message without the key) and pause the key."""
    pause(backend, CONFIG_PAUSE, problem=message)


def clear_problem(backend: EmbeddingBackend) -> None:
    """A request succeeded: whatever was wrong with the configuration is fixed."""
    with own_transaction() as using:
        rows = RateLimit.objects.using(using).filter(key=limit_key(backend))
        rows.exclude(problem="").update(problem="", problem_at=None)


def configuration_problem(backend: EmbeddingBackend | None = None) -> str | None:
    """What a worker last found wrong with ``backend``'s configuration, or None.

    ``backend`` defaults to the configured one; for a field pinned to another model,
    pass ``field.backend``. The message says which setting to change and never holds
    the key. It is cleared by the next request that succeeds, and belongs to the key
    and model it was seen with: after the key is changed, this returns None.
    """
    backend = backend or get_backend()
    using = router.db_for_read(RateLimit)
    with tenancy.public(using):
        problems = RateLimit.objects.using(using).filter(key=limit_key(backend)).exclude(problem="")
        return problems.values_list("problem", flat=True).first()


def try_acquire(backend: EmbeddingBackend, *, tokens: int) -> float:
    """Count one request of ``tokens`` tokens and return 0 if it may be sent now; else the seconds to wait.

    For callers that must not wait, such as a search inside a web request. Raises
    :class:`Paused` when the key is paused for a configuration problem, as
    :func:`acquire` does: waiting the seconds out would not help, fixing the setting would.
    """
    wait, paused, problem = _try_acquire(limit_key(backend), tokens)
    if paused and problem:
        raise Paused(wait, problem)
    return wait
