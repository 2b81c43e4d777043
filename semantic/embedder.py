"""Embedding rows: find the work, batch it, call the backend with retries.

What the backend answers is written back by :mod:`semantic.writer` (each write only
if the row still holds the text that was embedded); passages by
:mod:`semantic.passage_worker`; which rows a run may take is :mod:`semantic.claims`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.db import DatabaseError, models, router

from semantic import ratelimit, tenancy
from semantic.backends import (
    BAD_INPUT,
    CONFIG,
    FIELD,
    TRANSIENT,
    EmbeddingBackend,
    EmbeddingError,
    Vector,
    malformed,
    redact_keys,
)
from semantic.claims import DEFERRED, RowClaimsMixin
from semantic.conf import semantic_settings as conf
from semantic.definitions import older_definition
from semantic.fields import EmbeddingField
from semantic.passage_worker import PassageWorkMixin
from semantic.rows import pending_keys, pending_rows
from semantic.running_task import run_deadline
from semantic.text import clean
from semantic.writer import Item, Outcome, RowWriterMixin

logger = logging.getLogger("semantic")


class Embedder(RowClaimsMixin, RowWriterMixin, PassageWorkMixin):
    """Embeds one field of one model: its rows, then (for ``passages``) their passages."""

    WRONG_SIZE = (
        "{label} stores {dimensions} dimensions, but {model} answered with {size}-dimensional vectors: "
        "set dimensions={size} on the field (then makemigrations and migrate), or choose a model that "
        "makes {dimensions}."
    )
    WRITE_FAILED = "The database refused the vectors ({error}); the rows are retried later."
    SCHEMA_DROPPED = (
        "the tenant schema {schema!r} was dropped while its rows were embedded (the tenant was deleted); "
        "nothing is left to write."
    )
    #: Why a run stopped after a request spent its attempts on errors that may pass (5xx, time-outs, network).
    API_FAILING = (
        "The embedding API kept failing ({error}): one request failed {attempts} time(s), so the run sent no "
        "more. That request's rows are recorded as failed and retried later; the rows not sent stay pending "
        "for the next run or sweep."
    )
    #: Why a run in a django-q2 task stopped before its time was up (:attr:`deadline`).
    OUT_OF_TIME = (
        'The run stopped sending before django-q2\'s Q_CLUSTER["timeout"] would kill its task: what it '
        "embedded is stored, and the rest is left for the next run or sweep (semantic_embed has no time limit)."
    )
    #: Why a run in a django-q2 task stopped at its time (:attr:`deadline`) while a request was failing.
    API_FAILING_OUT_OF_TIME = (
        "The embedding API kept failing ({error}): one request failed {attempts} time(s) before the run had to "
        "stop for django-q2's Q_CLUSTER[\"timeout\"]. That request's rows are recorded as failed and retried "
        "later; the rows not sent stay pending for the next run or sweep."
    )

    def __init__(
        self,
        model: type[models.Model],
        field: EmbeddingField,
        *,
        backend: EmbeddingBackend | None = None,
        batch_size: int | None = None,
        using: str | None = None,
    ) -> None:
        # The table that holds the field: a proxy's or a multi-table child's rows are its rows.
        self.model = field.model if issubclass(model, field.model) else model
        self.field = field
        self.using = using or router.db_for_write(self.model)
        self.backend = backend or field.backend
        cap = self.backend.max_batch_size
        self.batch_size = max(1, min(batch_size or conf.BATCH_SIZE or cap, cap))
        self.spec = field.spec()
        self.outcome = Outcome()
        #: Why the run ended early (the API cannot be used now), or None.
        self.stopped: str | None = None
        #: Rows this run wrote a vector to: their passages follow in the same run.
        self.written: list[Any] = []
        #: Whether the run ended because a Batch API submission holds the field (:meth:`held_for_batch`).
        self.deferred = False
        #: After this ``clock()`` reading no request is sent (:data:`OUT_OF_TIME`); None: no limit.
        #: In a django-q2 task, shortly before its timeout (:func:`semantic.running_task.run_deadline`).
        self.deadline = run_deadline()
        self.clock: Callable[[], float] = time.monotonic
        #: Why this process must not embed the field (:meth:`outdated`): "" when it may; None: not asked yet.
        self.older: str | None = None

    def run(
        self,
        pks: Sequence[Any] | None = None,
        *,
        limit: int | None = None,
        fill: bool = True,
        on_batch: Callable[[Outcome, int], None] | None = None,
    ) -> Outcome:
        """Embed the pending rows among ``pks``; with ``pks=None``, every pending row.

        With ``fill``, requests with room left take other pending rows too (so rows
        saved one by one still share requests). Rows are visited in primary-key order
        and each at most once, so a run always ends; ``limit`` caps the rows visited.
        ``on_batch(outcome, rows_visited)`` is called after every request. A field with
        ``passages`` then brings the passages of ``pks`` and of the rows written to up
        to date, now that their vectors are current; the sweep looks for other rows
        whose passages lag (:meth:`run_passages` with no ``pks``).
        """
        if self.outdated():
            return self.outcome
        visited = 0
        after: Any = None
        own = sorted(set(pks)) if pks is not None else None
        while limit is None or visited < limit:
            size = self.batch_size if limit is None else min(self.batch_size, limit - visited)
            rows = pending_rows(self.model, self.field, self.using).defer(self.field.attname)
            batch: list[models.Model] = []
            if own is not None:
                if not own:
                    break
                chunk, own = own[:size], own[size:]
                batch = list(rows.filter(pk__in=chunk).order_by("pk"))
                rows = rows.exclude(pk__in=chunk)
            if (own is None or fill) and len(batch) < size:
                # Few pending rows: ordered among their keys, read from the pending index.
                keys = pending_keys(self.model, self.field, self.using)
                if keys is not None:
                    rows = rows.filter(pk__in=keys)
                if after is not None:
                    rows = rows.filter(pk__gt=after)
                extra = list(rows.order_by("pk")[: size - len(batch)])
                if extra:
                    after = extra[-1].pk
                batch += extra
            if not batch:
                if own:
                    continue
                break
            if not visited and (problem := self.backend.setup_problem()):
                ratelimit.report_problem(self.backend, problem)  # as when a request meets it
                self.stop(problem)
                break
            visited += len(batch)
            taken = self.claim(batch)
            try:
                if self.deferred:
                    break
                self.process(self.still_needed(batch, taken))
            finally:
                self.release(taken)
            if on_batch:
                on_batch(self.outcome, visited)
            if self.stopped:
                break
        if self.field.passages:
            self.run_passages([*(pks or ()), *self.written])
        if self.deferred and not self.outcome.stopped:
            self.outcome.stopped = DEFERRED
        return self.outcome

    def outdated(self) -> bool:
        """Whether a newer process recorded another definition of the field (asked once per
        run): this one then embeds nothing, or it would re-embed, with its old definition,
        every row the newer one embedded (:mod:`semantic.definitions`)."""
        if self.older is None:
            self.older = older_definition(self.model._meta.label, self.field) or ""
            if self.older:
                logger.error(self.older)
                self.stopped = self.outcome.stopped = self.older
                self.outcome.errors.append(self.older)
        return bool(self.older)

    def process(self, rows: list[models.Model]) -> None:
        items = []
        unchanged = []
        field = self.field
        for row in rows:
            text = clean(field.source_text(row), self.backend.max_input_chars)
            title = field.title_text(row)
            item = Item(row.pk, field.text_hash(row), text, title and clean(title, 1000))
            if field.text_from_python():
                item.read_hash = getattr(row, field.source_hash_name)
                if item.hash == getattr(row, field.embedded_hash_name) and getattr(row, field.spec_name) == self.spec:
                    unchanged.append(item)  # only the stored hash was out of date
                    continue
            items.append(item)
        self.refresh_hashes(unchanged)
        self.write_all([(item, None) for item in items if not item.text])
        self.embed([item for item in items if item.text])

    def embed(self, items: list[Item]) -> None:
        """Embed ``items`` in as few requests as the backend allows (:meth:`send` sends each)."""
        for request in self.requests(items):
            self.send(request)

    def requests(self, items: list[Item]) -> list[list[Item]]:
        """``items`` cut into the requests the backend will make, so that each one waits its
        turn in the shared rate limit and is counted: a backend that takes one title per
        request (:attr:`~semantic.backends.EmbeddingBackend.one_title_per_request`) gets
        one title per call (rows with the same title share it, wherever they are).

        Each request also fits ``TOKENS_PER_MINUTE`` (:func:`ratelimit.fitting`).
        """
        groups = [items]
        if self.field.title_source and self.backend.one_title_per_request:
            by_title: dict[str | None, list[Item]] = {}
            for item in items:
                by_title.setdefault(item.title, []).append(item)
            groups = list(by_title.values())
        requests = []
        for group in groups:
            for size in ratelimit.fitting([item.text for item in group]):
                requests.append(group[:size])
                group = group[size:]
        return requests

    def send(self, items: list[Item]) -> None:
        """Embed ``items`` in one request, retrying transient errors with backoff.

        A rejected text splits the batch to find it; each half counts its attempts
        afresh, since the server errors its parent met say nothing about the half. A
        configuration error, a pause longer than ``MAX_BACKOFF``, or a request that used
        up its attempts on transient errors stops the run (:attr:`stopped`): the rows no
        request was made for stay pending, without a failure record, for the next sweep
        or save.
        """
        if not items or self.stopped:
            return
        attempt = 0
        message = ""
        while True:
            if self.time_left() <= 0:
                self.out_of_time(items, attempt, message)
                return
            try:
                ratelimit.acquire(
                    self.backend,
                    tokens=ratelimit.estimated_tokens(item.text for item in items),
                    max_pause=min(conf.MAX_BACKOFF, self.time_left()),
                )
            except ratelimit.Paused as paused:
                if attempt and not paused.problem and paused.seconds <= conf.MAX_BACKOFF:  # outlasts the time left
                    self.out_of_time(items, attempt, message)
                else:
                    self.stop(str(paused))
                return
            attempt += 1
            for item in items:
                item.attempts += 1
            self.outcome.requests += 1
            try:
                vectors = self.backend.embed(
                    [item.text for item in items],
                    task_type=self.field.task_type,
                    dimensions=self.field.dimensions,
                    titles=[item.title for item in items] if self.field.title_source else None,
                )
                self.check(vectors, len(items))
            except EmbeddingError as exc:
                error = exc
            except Exception as exc:  # a backend bug must not lose the batch
                error = EmbeddingError(self.redact(f"{type(exc).__name__}: {exc}"), kind=TRANSIENT)
            else:
                ratelimit.clear_problem(self.backend)
                self.store(items, vectors)
                return
            message = self.redact(str(error))
            if error.kind == CONFIG:
                # No text is at fault: every request would fail the same way until the setting is fixed.
                ratelimit.report_problem(self.backend, message)
                self.stop(message)
                return
            if error.kind == FIELD:
                # Only this field's settings are wrong: its rows stay pending, other fields go on.
                self.stop(message)
                return
            if error.kind == BAD_INPUT:
                if len(items) > 1:
                    # One bad text fails the whole request: split to find it.
                    half = len(items) // 2
                    self.embed(items[:half])
                    self.embed(items[half:])
                else:
                    self.fail(items, message, permanent=True)
                return
            wait = error.retry_after if error.retry_after is not None else conf.BACKOFF * 2 ** (attempt - 1)
            if error.retry_after is not None:
                ratelimit.pause(self.backend, wait)  # every worker on this key waits, this one too
            if attempt >= conf.MAX_ATTEMPTS or wait > conf.MAX_BACKOFF:
                self.fail(items, message, permanent=False, retry_in=max(wait, conf.MAX_BACKOFF))
                if error.retry_after is None or wait <= conf.MAX_BACKOFF:
                    # The next request would meet the same API and wait as long, batch after
                    # batch, until django-q2 kills the task past Q_CLUSTER["timeout"] with a
                    # batch in flight. (A longer shared pause stops the run at the next acquire(),
                    # saying how long it lasts.)
                    self.stop(self.API_FAILING.format(error=message, attempts=attempt))
                return
            logger.info("Embedding request failed (%s); retrying in %.1fs.", message, wait)
            if error.retry_after is None:
                # With one, the next acquire() waits out the shared pause. Not past the deadline.
                time.sleep(min(wait, max(0.0, self.time_left())))

    def store(self, items: list[Item], vectors: list[Vector]) -> None:
        """Write one request's vectors; if the database refuses them, the batch fails, not the run.

        The rows are recorded as failed (retried by a later sweep) and the run goes on with
        the next batch. The write's own transaction (a savepoint in a caller's one) keeps a
        caller's transaction usable after the error.
        """
        if tenancy.dropped(self.using):
            # The app's tables found first would be the public schema's: passages and failure records there.
            self.stop(self.SCHEMA_DROPPED.format(schema=tenancy.tenant_schema(self.using)))
            return
        try:
            self.write_all(list(zip(items, vectors)))
        except DatabaseError as exc:
            # Its first line only: the rest quotes the statement, vectors and hashes included.
            reason = (str(exc).strip().splitlines() or [""])[0]
            message = self.redact(self.WRITE_FAILED.format(error=f"{type(exc).__name__}: {reason}"))
            self.fail(items, message, permanent=False, retry_in=conf.MAX_BACKOFF)

    def out_of_time(self, items: list[Item], attempts: int, message: str) -> None:
        """Stop at :attr:`deadline`. If ``items``' request was failing (``attempts`` made, the
        last answered ``message``), its rows are recorded as failed, as after its last attempt:
        against an API that fails slowly (time-outs), a run in a task with a short
        ``Q_CLUSTER["timeout"]`` never gets to its last attempt, and the failure would show nowhere."""
        if not attempts:
            self.stop(self.OUT_OF_TIME)
            return
        self.fail(items, message, permanent=False, retry_in=conf.MAX_BACKOFF)
        self.stop(self.API_FAILING_OUT_OF_TIME.format(error=message, attempts=attempts))

    def time_left(self) -> float:
        """Seconds before :attr:`deadline` (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - self.clock()

    def stop(self, message: str) -> None:
        """End the run without sending more: the API cannot be used now (see :meth:`embed`)."""
        logger.warning("Embedding %s.%s stopped: %s", self.model._meta.label, self.field.name, message)
        self.stopped = self.outcome.stopped = message
        if message not in self.outcome.errors:
            self.outcome.errors.append(message)

    def redact(self, message: str) -> str:
        return redact_keys(message, self.backend)

    def check(self, vectors: list[Vector], expected: int) -> None:
        """Whatever the backend, nothing unusable is written: a malformed answer is retried
        like a server error; vectors of another size stop this field only (the key is fine)."""
        if len(vectors) != expected:
            raise EmbeddingError(f"The backend returned {len(vectors)} vectors for {expected} texts.", kind=TRANSIENT)
        for vector in vectors:
            if problem := malformed(vector):
                raise EmbeddingError(f"The backend sent a malformed answer: {problem}.", kind=TRANSIENT)
        for vector in vectors:
            if len(vector) != self.field.dimensions:
                raise EmbeddingError(
                    self.WRONG_SIZE.format(
                        label=f"{self.model._meta.label}.{self.field.name}",
                        dimensions=self.field.dimensions,
                        model=self.backend.model_id,
                        size=len(vector),
                    ),
                    kind=FIELD,
                )
