"""Writing back what the backend answered: vectors, cleared rows and failures.

Every write is conditional on the row still holding the text that was embedded
(``WHERE md5(<its text>) = <hash sent>``), so a row edited while its batch was in
flight keeps no vector of its old text; the edit's own task embeds the new text.
When the text comes from Python, the check is that ``<name>_source_hash`` still holds
what was read with the row, and the write stores the hash of the text embedded, so a
row changed behind ``save()``'s back is embedded once, not re-sent on every sweep.

Each batch is written in a transaction of its own, run again when it loses to a
concurrent one (:meth:`RowWriterMixin.in_transaction`), and only to the rows no other
transaction holds locked (:meth:`RowWriterMixin.lock_free`): the worker never waits for
a user's lock, so it never makes saves of its batch's other rows wait either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import DatabaseError, connections, models, transaction
from django.db.models import CharField, Q, Value
from django.db.models.sql import Query
from django.utils import timezone

from semantic.backends import Vector
from semantic.expressions import IsDistinctFrom
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingFailure
from semantic.operations import sqlstate
from semantic.passage_worker import PassageItem
from semantic.rows import failures

logger = logging.getLogger("semantic")

#: ``Item.read_hash`` when the row's stored hash was not read: check against ``hash``.
UNREAD = "unread"
#: SQLSTATEs of a transaction that lost to a concurrent one: serialization failure, deadlock.
CONFLICTS = frozenset({"40001", "40P01"})
#: Times a write that keeps losing to concurrent transactions is run, the first included.
WRITE_ATTEMPTS = 4

T = TypeVar("T")


def lost_to_concurrent(exc: DatabaseError) -> bool:
    """Whether PostgreSQL refused a statement for a concurrent transaction's sake, asking to run it again."""
    return sqlstate(exc) in CONFLICTS


@dataclass
class Item:
    pk: Any
    hash: str | None
    text: str
    title: str | None
    attempts: int = 0
    #: For text from Python: the ``<name>_source_hash`` the row held when it was read.
    read_hash: str | None = UNREAD

    @property
    def guard(self) -> str | None:
        return self.hash if self.read_hash == UNREAD else self.read_hash


@dataclass
class Outcome:
    """What one run did, returned by tasks (and stored by django-q2)."""

    embedded: int = 0
    cleared: int = 0
    failed: int = 0
    changed_in_flight: int = 0
    requests: int = 0
    #: Passages sent and embedded; passages whose stored vector was kept; passages that are
    #: their row's whole text, given the row's vector; rows whose passages were stored.
    passages: int = 0
    passages_reused: int = 0
    passages_from_row: int = 0
    passage_rows: int = 0
    passages_failed: int = 0
    #: Of ``failed`` and ``passages_failed``: those whose text the API refused for good (a
    #: permanent failure record). No retry cures them, only a change of the text.
    refused: int = 0
    errors: list[str] = dataclass_field(default_factory=list)
    #: Why the run ended before visiting every row (a configuration problem, the API failing, a long pause), or None.
    stopped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RowWriterMixin:
    """The Embedder's writes: each only if its row still holds the text it was read with."""

    WRITE_CONFLICT = (
        "{label}: other transactions kept editing {rows} row(s) of a batch while its vectors were written "
        "({attempts} attempts, PostgreSQL: {error}). The vectors were not kept; the rows stay pending and "
        "the next run or sweep embeds them again. If this recurs, rows are edited too often for batches "
        "this large at the database's isolation level: lower SEMANTIC['BATCH_SIZE']."
    )

    if TYPE_CHECKING:  # what the Embedder provides
        model: type[models.Model]
        field: EmbeddingField
        using: str
        spec: str
        outcome: Outcome
        written: list[Any]

        def passages_embedded(self, results: list[Any]) -> None: ...
        def passages_failed(self, items: list[Any], message: str, *, permanent: bool, retry_in: float) -> None: ...

    def write_all(self, results: list[tuple[Item, Vector | None]]) -> None:
        """Store a request's answers (None: no text, no vector), in one transaction.

        When other transactions keep winning over it, nothing is written: its rows stay
        pending and count as changed in flight, with no failure record, since neither
        the API nor the texts are at fault.
        """
        if results and isinstance(results[0][0], PassageItem):
            self.passages_embedded(results)  # type: ignore[arg-type]
            return
        vectors = [(item, vector) for item, vector in results if vector is not None]
        empty = [item for item, vector in results if vector is None]
        try:
            embedded, cleared = self.in_transaction(lambda: self.write_rows(vectors, empty))
        except DatabaseError as exc:
            if not lost_to_concurrent(exc):
                raise
            # Its first line only: the rest quotes the statement, vectors and hashes included.
            reason = (str(exc).strip().splitlines() or [""])[0]
            label = f"{self.model._meta.label}.{self.field.name}"
            message = self.WRITE_CONFLICT.format(label=label, rows=len(results), attempts=WRITE_ATTEMPTS, error=reason)
            logger.warning(message)
            self.outcome.changed_in_flight += len(results)
            if message not in self.outcome.errors:
                self.outcome.errors.append(message)
            return
        self.outcome.embedded += len(embedded)
        self.outcome.cleared += len(cleared)
        self.outcome.changed_in_flight += len(results) - len(embedded) - len(cleared)
        self.written += embedded + cleared

    def write_rows(self, vectors: list[tuple[Item, Vector]], empty: list[Item]) -> tuple[list[Any], list[Any]]:
        """Write vectors and clear rows without text; returns the primary keys of each written.

        Rows another transaction holds locked are left out (:meth:`lock_free`): they stay
        pending, with no failure record, and count as changed in flight.
        """
        free = self.lock_free([item.pk for item, _ in vectors] + [item.pk for item in empty])
        vectors = [(item, vector) for item, vector in vectors if str(item.pk) in free]
        empty = [item for item in empty if str(item.pk) in free]
        embedded = self.write_vectors(vectors) if vectors else []
        cleared = [item.pk for item in empty if self.write(item, None)]
        if embedded or cleared:
            self.failures().filter(object_pk__in=[str(pk) for pk in embedded + cleared]).delete()
        return embedded, cleared

    def in_transaction(self, write: Callable[[], T]) -> T:
        """Run ``write`` in a transaction of its own, again when it lost to a concurrent one.

        Under REPEATABLE READ or SERIALIZABLE isolation, PostgreSQL refuses to change a row
        that another transaction changed after this one's snapshot (SQLSTATE 40001), where
        READ COMMITTED would look at the row again; under any level it ends one side of a
        deadlock (40P01). It asks for the transaction to run again, which then sees the other
        one's edit: the writes' guards keep an edited text from getting an old vector. In a
        caller's transaction each attempt is a savepoint; the caller's snapshot stays, so
        there a refusal comes back on every attempt, and the caller's transaction stays usable.
        """
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with transaction.atomic(using=self.using):
                    return write()
            except DatabaseError as exc:
                if attempt == WRITE_ATTEMPTS or not lost_to_concurrent(exc):
                    raise
                logger.info("A write lost to a concurrent transaction (attempt %d); running it again.", attempt)
        raise AssertionError("unreachable")

    def lock_free(self, pks: list[Any]) -> set[str]:
        """Lock, for the rest of the write's transaction, the rows among ``pks`` that no other
        transaction holds; returns their primary keys, as text.

        An ``UPDATE`` of many rows locks them one by one and waits, with no time limit, for
        a row a user's transaction holds (``select_for_update()``, an open ``atomic()``
        block) while keeping the rows it already locked: saves of those rows, which the
        user never touched, would wait as long as the user's transaction lasts, and a
        worker held past ``Q_CLUSTER["timeout"]`` is killed with its batch. Should the user's
        transaction then save one of those rows, the two wait for each other and PostgreSQL
        ends one as a deadlock: the user's, when the worker has waited longer than
        ``deadlock_timeout``. Taking the locks first with ``SKIP LOCKED`` never waits, so the
        writes that follow never do either, and the worker is never part of a lock cycle.
        The vector made for a skipped row is dropped and the row stays pending for the next
        run or sweep: a row locked by a user is usually being edited, and its new text then
        needs a new vector anyway; at worst its text is sent once more.

        ``FOR NO KEY UPDATE`` is the lock the writes' ``UPDATE`` takes: the strongest would
        also make inserts of rows pointing at these ones (foreign keys) wait for the write.
        Under REPEATABLE READ or SERIALIZABLE, a row changed since the transaction's
        snapshot is refused here (40001), and :meth:`in_transaction` runs the write again.

        The statement reads one table, the one that declares the field (a proxy's or a
        multi-table child's rows are that model's), with no join, so the lock needs no
        ``OF`` list to say which table's rows it takes: that list takes only unqualified
        names, and a table in another schema (``db_table = '"billing"."invoice"'``) has none.
        """
        if not pks:
            return set()
        rows = self.model._base_manager.using(self.using).filter(pk__in=pks).order_by("pk")
        locked = rows.select_for_update(skip_locked=True, no_key=True).values_list("pk", flat=True)
        free = {str(pk) for pk in locked}
        if skipped := len({str(pk) for pk in pks} - free):
            label = f"{self.model._meta.label}.{self.field.name}"
            logger.info("%s: %d row(s) another transaction holds locked were left pending.", label, skipped)
        return free

    def write_vectors(self, results: list[tuple[Item, Vector]]) -> list[Any]:
        """Store a batch of vectors in one statement, each only if its row still holds its text.

        Returns the primary keys of the rows written.
        """
        field = self.field
        connection = connections[self.using]
        quote = connection.ops.quote_name
        table = quote(self.model._meta.db_table)
        pk = self.model._meta.pk
        rows = ", ".join(["(%s, %s, %s, %s)"] * len(results))
        guard_sql, guard_params = self.compile(field.stored_text_hash(), connection)
        python = field.text_from_python()
        sql = (
            f"UPDATE {table} "
            f"SET {quote(field.column)} = v.vector::{field.sized_db_type()}, "
            f"{quote(field.embedded_hash_name)} = v.hash, {quote(field.spec_name)} = %s, "
            f"{quote(field.pending_since_name)} = NULL"
            + (f", {quote(field.source_hash_name)} = v.hash " if python else " ")
            + f"FROM (VALUES {rows}) AS v(pk, hash, guard, vector) "
            f"WHERE {table}.{quote(pk.column)} = v.pk::{pk.rel_db_type(connection)} "
            f"AND ({guard_sql}) IS NOT DISTINCT FROM v.guard::text "
            f"RETURNING {table}.{quote(pk.column)}"
        )
        params: list[Any] = [self.spec]
        for item, vector in results:
            params += [str(item.pk), item.hash, item.guard, "[" + ",".join(map(str, vector)) + "]"]
        with connection.cursor() as cursor:
            cursor.execute(sql, params + guard_params)
            return [row[0] for row in cursor.fetchall()]

    def compile(self, expression: Any, connection: Any) -> tuple[str, list[Any]]:
        """SQL for an expression over this model's columns, qualified by its table name."""
        query = Query(self.model)
        compiler = query.get_compiler(connection=connection)
        sql, params = compiler.compile(expression.resolve_expression(query, allow_joins=False))
        return sql, list(params)

    def still_holds(self, item: Item) -> Q:
        """The row still holds the text ``item`` was read with."""
        return ~Q(IsDistinctFrom(self.field.stored_text_hash(), Value(item.guard, CharField())))

    def refresh_hashes(self, items: list[Item]) -> None:
        """Store the hash of each item's Python text on its row, in one statement, where the
        row still holds the hash it was read with: rows whose vector was made from that
        text, rows never hashed, and rows a Batch API job is about to carry."""
        if not items:
            return
        field = self.field
        connection = connections[self.using]
        quote = connection.ops.quote_name
        table = quote(self.model._meta.db_table)
        pk = self.model._meta.pk
        guard_sql, guard_params = self.compile(field.stored_text_hash(), connection)
        update = f"UPDATE {table} SET {quote(field.source_hash_name)} = v.hash FROM (VALUES "
        where = (
            f") AS v(pk, hash, guard) WHERE {table}.{quote(pk.column)} = v.pk::{pk.rel_db_type(connection)} "
            f"AND ({guard_sql}) IS NOT DISTINCT FROM v.guard::text"
        )

        def refresh() -> None:
            free = self.lock_free([item.pk for item in items])  # a row left out keeps its old hash
            locked = [item for item in items if str(item.pk) in free]
            if not locked:
                return
            rows = ", ".join(["(%s, %s, %s)"] * len(locked))
            params = [value for item in locked for value in (str(item.pk), item.hash, item.guard)]
            with connection.cursor() as cursor:
                cursor.execute(update + rows + where, params + guard_params)

        self.in_transaction(refresh)

    def write(self, item: Item, vector: Vector | None) -> bool:
        """Store ``vector`` (None: no text, no vector) if the row still holds the text it was made from."""
        field = self.field
        values = {
            field.attname: vector,
            field.embedded_hash_name: item.hash,
            field.spec_name: self.spec if vector is not None else None,
            field.pending_since_name: None,
        }
        if field.text_from_python():
            values[field.source_hash_name] = item.hash
        return bool(
            self.model._base_manager.using(self.using).filter(self.still_holds(item), pk=item.pk).update(**values)
        )

    def fail(self, items: list[Item], message: str, *, permanent: bool, retry_in: float = 0) -> None:
        if items and isinstance(items[0], PassageItem):
            self.passages_failed(items, message, permanent=permanent, retry_in=retry_in)  # type: ignore[arg-type]
            return
        label = f"{self.model._meta.label}.{self.field.name}"
        logger.warning("Embedding %d row(s) of %s failed: %s", len(items), label, message)
        self.outcome.failed += len(items)
        if permanent:
            self.outcome.refused += len(items)
        if message not in self.outcome.errors:
            self.outcome.errors.append(message)
        retry_at = None if permanent else timezone.now() + timedelta(seconds=retry_in)
        if self.field.text_from_python():
            # A failure is kept for the text's hash: the row's stored hash must be that one too.
            self.refresh_hashes([item for item in items if item.guard != item.hash])
        for item in items:
            self.record_failure(self.field.name, item.pk, item.attempts, item.hash, message, permanent, retry_at)

    def record_failure(
        self,
        field_name: str,
        pk: Any,
        attempts: int,
        source_hash: str,
        message: str,
        permanent: bool,
        retry_at: Any,
    ) -> None:
        """Add a failed request to the row's failure record (rows' and passages' alike)."""
        # Beside the rows, where pending_rows() and the status look for it.
        failure, _ = EmbeddingFailure.objects.using(self.using).get_or_create(
            model_label=self.model._meta.label, field_name=field_name, object_pk=str(pk), defaults={"error": message}
        )
        failure.attempts += attempts
        failure.error = message
        failure.permanent = permanent
        failure.source_hash = source_hash
        failure.retry_at = retry_at
        failure.save(using=self.using)

    def failures(self) -> models.QuerySet[EmbeddingFailure]:
        return failures(self.model, self.field, self.using)
