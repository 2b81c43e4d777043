"""Which rows a run may take: PostgreSQL advisory locks, so that runs at once (the sweep,
the save hook's tasks, ``semantic_embed --queue`` chunks) never send the same row twice,
and a Batch API submission holds a field's rows while it builds its jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from django.db import connections, models

from semantic import tenancy
from semantic.rows import pending_rows

logger = logging.getLogger("semantic")

#: Why a run ended early while a Batch API submission held the field (:meth:`RowClaimsMixin.held_for_batch`).
DEFERRED = (
    "A Batch API submission holds this field's rows while it builds its jobs; the rows it does not "
    "take are embedded by the next run or sweep."
)
#: Why rows may stay pending after a run that released fewer locks than it took (:meth:`RowClaimsMixin.release`).
LOCKS_LOST = (
    "{label}: {count} of the locks this run took on its rows were not held by its database session when it "
    "released them. Either the connection was lost and reopened, or a connection pooler in transaction "
    "mode (PgBouncer, Supavisor's port 6543) ran its statements on different server connections: the "
    "locks then stay on a pooled connection, and other runs skip those rows as taken until it closes. "
    "Connect workers and semantic_embed to PostgreSQL directly or through a pooler in session mode."
)


class RowClaimsMixin:
    """Taking and releasing rows for :class:`semantic.embedder.Embedder` (``model``, ``field``,
    ``using``, ``outcome`` and ``deferred`` are the embedder's)."""

    model: type[models.Model]
    field: Any
    using: str
    outcome: Any
    deferred: bool

    def claim(self, rows: list[models.Model]) -> list[str]:
        """Take the rows no other worker holds; returns their primary keys, as text.

        A session-level advisory lock per row (keyed by the field and the primary key's
        hash) marks a row as taken until its batch is written, so a sweep, the save
        hook's tasks and ``semantic_embed --queue`` chunks running at once never send
        the same row twice. The lock does not block saves of the row.

        Taking rows also takes the field's lock, shared: while a Batch API submission
        holds it (:meth:`held_for_batch`), nothing is taken and the run ends
        (:attr:`deferred`); the rows stay pending, for the job or a later sweep.
        """
        self.deferred = False  # this claim's answer, not an earlier one's: its locks must be released
        if not rows:
            return []
        connection = connections[self.using]
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock_shared(%s)", [self.lock_key()])
            if not cursor.fetchone()[0]:
                logger.info("%s.%s: a Batch API submission holds its rows.", self.model._meta.label, self.field.name)
                self.deferred = True
                return []
            cursor.execute(
                "SELECT k FROM unnest(%s::text[]) AS k WHERE pg_try_advisory_lock(%s, hashtext(k))",
                [[str(row.pk) for row in rows], self.lock_key(32)],
            )
            taken = [row[0] for row in cursor.fetchall()]
            if not taken:
                cursor.execute("SELECT pg_advisory_unlock_shared(%s)", [self.lock_key()])
            return taken

    def still_needed(self, rows: list[models.Model], taken: list[str]) -> list[models.Model]:
        """The taken rows that still need embedding: another worker may have written some meanwhile."""
        held = set(taken)
        candidates = [row.pk for row in rows if str(row.pk) in held]
        pending = set(
            pending_rows(self.model, self.field, self.using).filter(pk__in=candidates).values_list("pk", flat=True)
        )
        return [row for row in rows if row.pk in pending]

    def release(self, taken: list[str]) -> None:
        """Let other workers take the rows :meth:`claim` took."""
        if not taken:
            return
        connection = connections[self.using]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FILTER (WHERE NOT pg_advisory_unlock(%s, hashtext(k))) FROM unnest(%s::text[]) AS k",
                [self.lock_key(32), taken],
            )
            lost = cursor.fetchone()[0]
            cursor.execute("SELECT pg_advisory_unlock_shared(%s)", [self.lock_key()])
            lost += not cursor.fetchone()[0]
        if lost:
            message = LOCKS_LOST.format(label=f"{self.model._meta.label}.{self.field.name}", count=lost)
            logger.error(message)
            if message not in self.outcome.errors:
                self.outcome.errors.append(message)

    @contextlib.contextmanager
    def held_for_batch(self) -> Iterator[None]:
        """Hold the field's rows while a Batch API submission is built.

        A job's rows are left to it once the job is recorded; until then (rows read, texts
        uploaded) this keeps them from workers and from a second submission. It waits for
        the batches workers are sending to be written; a worker that finds it held ends
        its run (:attr:`deferred`, :data:`DEFERRED`), so rows saved meanwhile that no job
        carries wait for the sweep.
        """
        connection = connections[self.using]
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [self.lock_key()])
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self.lock_key()])

    def lock_key(self, bits: int = 64) -> int:
        """A number naming this model's field, for PostgreSQL advisory locks: in a tenant's
        schema, that schema's field (advisory locks are the database's, and tenants' tables
        share their names and primary keys)."""
        name = f"semantic:{self.model._meta.label}.{self.field.name}"
        schema = tenancy.tenant_schema(self.using)
        digest = hashlib.md5((name if schema is None else f"{name}@{schema}").encode()).digest()
        return int.from_bytes(digest[: bits // 8], "big", signed=True)
