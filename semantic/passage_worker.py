"""The passage half of the worker: cut lagging rows, embed their changed passages, store them.

:class:`PassageWorkMixin` is a base of :class:`semantic.embedder.Embedder`, so passages
travel the same road as rows: the same advisory claim per row, the same requests
(``Embedder.embed()``: batching, the shared rate limit, retries with backoff, splitting
a batch to find a rejected text, stopping on a configuration error), with the row's
title for ``RETRIEVAL_DOCUMENT``. Only which rows are taken, and where vectors are
written, differ.

Each request's vectors are stored as soon as it is answered, so a run that stops
(its time in a django-q2 task is up, the API fails) or is killed keeps what it paid
for: a row not yet complete keeps its new passages marked partial
(:func:`~semantic.passage_rows.store_partial`), and stays lagging until a run gives the
rest a vector (reusing those) and stores the row's passages together, under its marker.
Rows with the fewest passages to send go first, so a long text does not hold back the
short ones it shares a batch with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from semantic.passage_rows import (
    FAILURE_SUFFIX,
    Cut,
    Piece,
    cut_all,
    fill_known,
    lagging_rows,
    store,
    store_partial,
    sweep_orphans,
)
from semantic.text import clean

if TYPE_CHECKING:
    from django.db import models

    from semantic.fields import EmbeddingField

logger = logging.getLogger("semantic")

#: Logged when a run stops with passages left to send (its time is up, or the API failed).
PASSAGES_LEFT = "%s: %d passage(s) of %d row(s) are left for the next run or sweep; those embedded are stored."


@dataclass
class PassageItem:
    """A passage to send: what ``Embedder.embed()`` reads of an item, and where its vector goes."""

    pk: Any
    hash: str
    text: str
    title: str | None
    position: int
    #: The row's text hash the passage was cut from, for its failure record.
    row_hash: str
    attempts: int = 0


def passage_items(row: Cut, missing: Sequence[Piece], max_chars: int) -> list[PassageItem]:
    """The ``missing`` passages of ``row`` as items to send: each text as sent (:func:`clean`)."""
    return [
        PassageItem(row.pk, piece.text_hash, clean(piece.text, max_chars), row.title, piece.position, row.row_hash)
        for piece in missing
    ]


class PassageWorkMixin:
    """Adds :meth:`run_passages` to the Embedder, and the writing of passage vectors."""

    if TYPE_CHECKING:  # what the Embedder provides
        model: type[models.Model]
        field: EmbeddingField
        using: str
        backend: Any
        batch_size: int
        spec: str
        outcome: Any
        stopped: str | None
        deferred: bool
        OUT_OF_TIME: str

        def outdated(self) -> bool: ...
        def time_left(self) -> float: ...
        def stop(self, message: str) -> None: ...
        def claim(self, rows: list[Any]) -> list[str]: ...
        def release(self, taken: list[str]) -> None: ...
        def embed(self, items: list[Any]) -> None: ...

    def run_passages(self, pks: Sequence[Any] | None = None, *, limit: int | None = None) -> None:
        """Bring the passages of lagging rows among ``pks`` (all lagging rows by default) up to date.

        With no ``pks`` it reads every row whose vector is current to find those whose
        passages lag (no index on the users' table can say): the sweep's job, not a save's.
        """
        if not self.field.passages or self.stopped or (pks is not None and not pks) or self.outdated():
            return
        if pks is not None:
            sweep_orphans(self.model, self.field, self.using, pks)  # rows whose text was emptied
        visited = 0
        after: Any = None
        while not self.stopped and (limit is None or visited < limit):
            if self.time_left() <= 0:
                # Re-cutting rows whose passages all keep their vectors sends no request, so
                # the request loop's own deadline never comes: after an upgrade that changed
                # the cutting rules, the sweep re-cut every row until django-q2 killed it.
                self.stop(self.OUT_OF_TIME)
                break
            rows = lagging_rows(self.model, self.field, self.using).order_by("pk")
            if pks is not None:
                rows = rows.filter(pk__in=list(pks))
            if after is not None:
                rows = rows.filter(pk__gt=after)
            size = self.batch_size if limit is None else min(self.batch_size, limit - visited)
            batch = list(rows[:size])
            if not batch:
                break
            after = batch[-1].pk
            visited += len(batch)
            taken = self.claim(batch)
            try:
                if self.deferred:
                    break
                held = set(taken)
                still = set(
                    lagging_rows(self.model, self.field, self.using)
                    .filter(pk__in=[row.pk for row in batch if str(row.pk) in held])
                    .values_list("pk", flat=True)
                )
                self.embed_passages([row for row in batch if row.pk in still])
            finally:
                self.release(taken)

    def embed_passages(self, rows: list[Any]) -> None:
        """Cut ``rows``, send the passages with no stored vector for their text, fewest first;
        store what each request answers (:meth:`passages_embedded`)."""
        if not rows:
            return
        cuts, known = cut_all(self.model, self.field, rows, self.using)
        #: The rows whose passages this run still has to store, and the positions stored partial.
        self._passage_cuts: dict[Any, Cut] = {}
        self._passage_saved: dict[Any, set[int]] = {}
        missing_of = {}
        for row in rows:
            row_cut = cuts[row.pk]
            missing_of[row.pk], from_row = fill_known(row_cut, known, getattr(row, self.field.attname))
            self.outcome.passages_from_row += from_row
            self.outcome.passages_reused += len(row_cut.pieces) - len(missing_of[row.pk]) - from_row
            if row_cut.complete:
                self.store_passages(row_cut)
            else:
                self._passage_cuts[row.pk] = row_cut
                self._passage_saved[row.pk] = set()
        items = []
        for pk in sorted(self._passage_cuts, key=lambda pk: len(missing_of[pk])):
            items.extend(passage_items(cuts[pk], missing_of[pk], self.backend.max_input_chars))
        for start in range(0, len(items), self.batch_size):
            if self.stopped:
                break
            request = [item for item in items[start : start + self.batch_size] if item.pk in self._passage_cuts]
            self.embed(request)  # type: ignore[arg-type]
        if self.stopped and self._passage_cuts:
            left = sum(piece.vector is None for row_cut in self._passage_cuts.values() for piece in row_cut.pieces)
            label = f"{self.model._meta.label}.{self.field.name}"
            logger.warning(PASSAGES_LEFT, label, left, len(self._passage_cuts))

    def store_passages(self, row_cut: Cut) -> None:
        if store(self.model, self.field, row_cut, self.spec, self.using):
            self.outcome.passage_rows += 1
        else:
            self.outcome.changed_in_flight += 1

    def passages_embedded(self, results: list[tuple[PassageItem, list[float]]]) -> None:
        """Store a request's vectors: a row now complete with all its passages, the others'
        as partial; a row that changed meanwhile is sent no more."""
        self.outcome.passages += len(results)
        touched = {}
        for item, vector in results:
            row_cut = self._passage_cuts.get(item.pk)
            if row_cut is not None:
                row_cut.pieces[item.position].vector = list(vector)
                touched[item.pk] = row_cut
        for pk, row_cut in touched.items():
            if row_cut.complete:
                del self._passage_cuts[pk]
                self.store_passages(row_cut)
                continue
            saved = self._passage_saved[pk]
            # The first time, the vectors reused from stored passages too: the positions
            # written over may have held them.
            pieces = [piece for piece in row_cut.pieces if piece.vector is not None and piece.position not in saved]
            if store_partial(self.field, row_cut, pieces, self.spec, self.using):
                saved.update(piece.position for piece in pieces)
            else:
                del self._passage_cuts[pk]
                self.outcome.changed_in_flight += 1

    def passages_failed(self, items: list[PassageItem], message: str, *, permanent: bool, retry_in: float) -> None:
        """Record the rows whose passages failed: they stay lagging, with the passages
        stored so far kept partial, until the failure's retry."""
        label = f"{self.model._meta.label}.{self.field.name}"
        logger.warning("Embedding %d passage(s) of %s failed: %s", len(items), label, message)
        self.outcome.passages_failed += len(items)
        if permanent:
            self.outcome.refused += len(items)
        if message not in self.outcome.errors:
            self.outcome.errors.append(message)
        retry_at = None if permanent else timezone.now() + timedelta(seconds=retry_in)
        rows = {item.pk: item for item in items}
        for pk, item in rows.items():
            self.record_failure(  # type: ignore[attr-defined]
                self.field.name + FAILURE_SUFFIX, pk, item.attempts, item.row_hash, message, permanent, retry_at
            )
