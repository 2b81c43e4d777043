"""The passage half of the worker: cut lagging rows, embed their changed passages, store them.

:class:`PassageWorkMixin` is a base of :class:`semantic.embedder.Embedder`, so passages
travel the same road as rows: the same advisory claim per row, the same requests
(``Embedder.embed()``: batching, the shared rate limit, retries with backoff, splitting
a batch to find a rejected text, stopping on a configuration error), with the row's
title for ``RETRIEVAL_DOCUMENT``. Only which rows are taken, and where vectors are
written, differ. A row's passages are stored together, once every one has a vector,
so a search never sees half of an edit.
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
    sweep_orphans,
)
from semantic.text import clean

if TYPE_CHECKING:
    from django.db import models

    from semantic.fields import EmbeddingField

logger = logging.getLogger("semantic")


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

        def claim(self, rows: list[Any]) -> list[str]: ...
        def release(self, taken: list[str]) -> None: ...
        def embed(self, items: list[Any]) -> None: ...

    def run_passages(self, pks: Sequence[Any] | None = None, *, limit: int | None = None) -> None:
        """Bring the passages of lagging rows among ``pks`` (all lagging rows by default) up to date.

        With no ``pks`` it reads every row whose vector is current to find those whose
        passages lag (no index on the users' table can say): the sweep's job, not a save's.
        """
        if not self.field.passages or self.stopped or (pks is not None and not pks):
            return
        if pks is not None:
            sweep_orphans(self.model, self.field, self.using, pks)  # rows whose text was emptied
        visited = 0
        after: Any = None
        while not self.stopped and (limit is None or visited < limit):
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
        """Cut ``rows``, send the passages with no stored vector for their text, store complete rows."""
        if not rows:
            return
        cuts, known = cut_all(self.model, self.field, rows, self.using)
        items = []
        for row in rows:
            row_cut = cuts[row.pk]
            missing = fill_known(row_cut, known, getattr(row, self.field.attname))
            self.outcome.passages_reused += len(row_cut.pieces) - len(missing)
            items.extend(passage_items(row_cut, missing, self.backend.max_input_chars))
        self._passage_results: dict[tuple[Any, int], list[float]] = {}
        for start in range(0, len(items), self.batch_size):
            self.embed(items[start : start + self.batch_size])  # type: ignore[arg-type]
            if self.stopped:
                break
        for row_cut in cuts.values():
            for piece in row_cut.pieces:
                if piece.vector is None:
                    piece.vector = self._passage_results.get((row_cut.pk, piece.position))
            if row_cut.complete:
                self.store_passages(row_cut)

    def store_passages(self, row_cut: Cut) -> None:
        if store(self.model, self.field, row_cut, self.spec, self.using):
            self.outcome.passage_rows += 1
        else:
            self.outcome.changed_in_flight += 1

    def passages_embedded(self, results: list[tuple[PassageItem, list[float]]]) -> None:
        """Keep a request's vectors until the rest of their rows' passages are known."""
        for item, vector in results:
            self._passage_results[(item.pk, item.position)] = list(vector)
        self.outcome.passages += len(results)

    def passages_failed(self, items: list[PassageItem], message: str, *, permanent: bool, retry_in: float) -> None:
        """Record the rows whose passages failed; their other passages are not stored either."""
        label = f"{self.model._meta.label}.{self.field.name}"
        logger.warning("Embedding %d passage(s) of %s failed: %s", len(items), label, message)
        self.outcome.passages_failed += len(items)
        if message not in self.outcome.errors:
            self.outcome.errors.append(message)
        retry_at = None if permanent else timezone.now() + timedelta(seconds=retry_in)
        rows = {item.pk: item for item in items}
        for pk, item in rows.items():
            self.record_failure(  # type: ignore[attr-defined]
                self.field.name + FAILURE_SUFFIX, pk, item.attempts, item.row_hash, message, permanent, retry_at
            )
