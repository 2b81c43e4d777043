"""Passage state: which rows' passages are out of date, cutting a row, storing and deleting passages.

A field with ``passages`` keeps, beside each row's vector, one :class:`semantic.models.Passage`
per passage of the row's text. The passages follow the row's *embedded* text: once the
row's vector is current, the row's passages must have been cut from the same text
(``cut_from``), with the current sizes and rules, by the current model (``spec``); a row where
they were not is *lagging* and the worker cuts it again. A passage whose text is
unchanged keeps its vector, so an edit costs a request only for the passages it changed.

Passages go when their row does: the save hook's ``post_delete`` receiver deletes a
deleted row's passages, and the sweep removes those whose row is gone (raw SQL,
``QuerySet.update()`` of a key) or has no text any more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from django.db import models, router, transaction
from django.db.models import CharField, Count, Exists, OuterRef, Q, Sum, Value
from django.db.models.functions import MD5, Cast, Concat, Least, Length
from django.utils import timezone

from semantic.field_text import TITLE_SEPARATOR
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingFailure, Passage
from semantic.passages import split
from semantic.rows import FAILURE_SUFFIX, in_flight
from semantic.text import clean, sanitize, source_hash, storable

#: Rows cut (and their stored passage vectors read) at a time by the Batch API and the dry-run.
CUT_ROWS = 500
#: The version of the rules that cut a row into passages and say what a passage stores, part of
#: every row's marker (:func:`cut_marker`). Raise it with any change that moves a cut or changes a
#: passage's stored text: rows whose passages the earlier rules cut then lag, like rows whose sizes
#: changed, and runs cut them again, reusing the vector of each passage whose text as sent is the
#: same, so only the passages whose cut moved are sent. 2: lengths weighed by script (non-Latin
#: text is cut smaller, :func:`semantic.text.weighted_length`); control characters stored as written.
CUT_RULES = 2
#: What :func:`cut_marker` adds for the passages of a row not yet complete (:func:`store_partial`):
#: never a complete cut's marker, so the row stays lagging while a later run reuses their vectors,
#: yet it names the text they were cut from, so searches use them only while the row holds it.
PARTIAL = "partial"


def passages_of(model: type[models.Model], field: EmbeddingField, using: str | None = None) -> models.QuerySet:
    """Every stored passage of ``field``, in the database ``using``."""
    manager = Passage.objects if using is None else Passage.objects.using(using)
    return manager.filter(model_label=field.model._meta.label, field_name=field.name)


def cut_sizes(field: EmbeddingField, *, partial: bool = False) -> str:
    """What :func:`cut_marker` appends to a row's text hash before hashing it: the current sizes
    and rules, and whether the cut is (``partial``) only the passages stored so far of one."""
    max_chars, overlap = field.passage_sizes()
    return f"|{max_chars}|{overlap}|{CUT_RULES}" + (f"|{PARTIAL}" if partial else "")


def cut_marker(field: EmbeddingField, row_hash: Any, *, partial: bool = False) -> Any:
    """SQL (from a row's text hash expression) or Python (from a hash) for ``Passage.cut_from``,
    of a complete cut or (``partial``) of the passages stored so far of one."""
    sizes = cut_sizes(field, partial=partial)
    if isinstance(row_hash, str):
        return hashlib.md5(f"{row_hash}{sizes}".encode()).hexdigest()
    return MD5(Concat(row_hash, Value(sizes), output_field=CharField()))


def passage_failures(
    model: type[models.Model], field: EmbeddingField, using: str | None = None
) -> models.QuerySet[EmbeddingFailure]:
    """The failure records of ``field``'s passages, beside the rows (as :func:`semantic.rows.failures`)."""
    manager = EmbeddingFailure.objects.using(using or router.db_for_read(field.model))
    return manager.filter(model_label=field.model._meta.label, field_name=field.name + FAILURE_SUFFIX)


def lagging_rows(
    model: type[models.Model], field: EmbeddingField, using: str | None = None, *, in_batch_jobs: bool = False
) -> models.QuerySet:
    """Rows whose vector is current but whose passages were cut from another text,
    with other sizes or by another model; not those waiting out a passage failure, nor
    (unless ``in_batch_jobs``) those an open Batch API job of passages carries."""
    table_model = field.model
    pk_text = Cast(OuterRef("pk"), CharField())
    current = passages_of(table_model, field).filter(
        object_pk=pk_text,
        position=0,
        cut_from=cut_marker(field, OuterRef(field.embedded_hash_name)),
        spec=field.spec(),
    )
    waiting = passage_failures(table_model, field).filter(object_pk=pk_text)
    waiting = waiting.filter(
        Q(retry_at__gt=timezone.now()) | Q(permanent=True, source_hash=OuterRef(field.embedded_hash_name))
    )
    manager = table_model._base_manager if using is None else table_model._base_manager.using(using)
    rows = field.with_stored_text(manager.filter(field.is_current()).exclude(Exists(current)).exclude(Exists(waiting)))
    batched = None if in_batch_jobs else in_flight(table_model, field, passages=True, using=using)
    return rows.exclude(batched) if batched is not None else rows


def current_rows(model: type[models.Model], field: EmbeddingField) -> models.QuerySet:
    """Rows whose passages match their embedded text, sizes and model: what passage searches find."""
    current = passages_of(model, field).filter(
        object_pk=Cast(OuterRef("pk"), CharField()),
        position=0,
        cut_from=cut_marker(field, OuterRef(field.embedded_hash_name)),
        spec=field.spec(),
    )
    return field.model._base_manager.filter(field.is_current()).filter(Exists(current))


@dataclass
class Piece:
    """One passage of a row as cut now; ``vector`` once known."""

    position: int
    start: int
    end: int
    text: str
    text_hash: str
    vector: list[float] | None = None


@dataclass
class Cut:
    """A row's text cut into passages, with what identifies the cut."""

    pk: Any
    row_hash: str
    cut_from: str
    title: str | None
    pieces: list[Piece] = dataclass_field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(piece.vector is not None for piece in self.pieces)


def cut(field: EmbeddingField, row: models.Model) -> Cut:
    """The passages of ``row``'s text now, hashed with its title (what is sent beside each)."""
    max_chars, overlap = field.passage_sizes()
    row_hash = field.text_hash(row) or ""
    title = field.title_text(row)
    title = clean(title, 1000) if title is not None else None
    suffix = TITLE_SEPARATOR + (title or "") if field.title_source else ""
    result = Cut(row.pk, row_hash, cut_marker(field, row_hash), title)
    source = field.source_text(row)
    # Cut and hashed as sent, controls as spaces (sanitize() keeps every position); stored
    # as written, so a passage is its row's text[start:end] for search and highlighting.
    for position, passage in enumerate(split(sanitize(source), max_chars=max_chars, overlap=overlap)):
        digest = source_hash(passage.text + suffix) or ""
        shown = storable(source[passage.start : passage.end])
        result.pieces.append(Piece(position, passage.start, passage.end, shown, digest))
    return result


def cut_all(
    model: type[models.Model], field: EmbeddingField, rows: Iterable[models.Model], using: str | None = None
) -> tuple[dict[Any, Cut], dict[tuple[str, str], list[float]]]:
    """``rows`` cut as they are now (by primary key), and the stored vectors of their
    passages' texts (:func:`known_vectors`), for :func:`fill_known`."""
    cuts = {row.pk: cut(field, row) for row in rows}
    return cuts, known_vectors(model, field, cuts, using)


def fill_known(row: Cut, known: dict[tuple[str, str], list[float]], row_vector: Any) -> tuple[list[Piece], int]:
    """Give ``row``'s pieces the vectors already known; returns the pieces still without one,
    and how many took the row's own vector.

    A piece keeps the stored vector of the same text (``known``, from :func:`known_vectors`);
    a piece that is the row's whole text (and title) takes the row's own vector: nothing
    stored before, nothing sent.
    """
    missing = []
    from_row = 0
    for piece in row.pieces:
        if piece.vector is None:
            piece.vector = known.get((str(row.pk), piece.text_hash))
        if piece.vector is None and piece.text_hash == row.row_hash and row_vector is not None:
            piece.vector = as_floats(row_vector)
            from_row += 1
        if piece.vector is None:
            missing.append(piece)
    return missing, from_row


def as_floats(vector: Any) -> list[float]:
    """A stored vector as floats: a ``vector`` column reads as an array, a ``halfvec`` one as a HalfVector."""
    if hasattr(vector, "to_list"):
        return [float(x) for x in vector.to_list()]
    return [float(x) for x in vector]


def known_vectors(
    model: type[models.Model], field: EmbeddingField, pks: Iterable[Any], using: str | None = None
) -> dict[tuple[str, str], list[float]]:
    """Stored vectors of these rows' passages by ``(object_pk, text_hash)``, made by the current model."""
    stored = passages_of(model, field, using).filter(object_pk__in=[str(pk) for pk in pks], spec=field.spec())
    return {(pk, digest): vector for pk, digest, vector in stored.values_list("object_pk", "text_hash", "vector")}


def store(model: type[models.Model], field: EmbeddingField, row: Cut, spec: str, using: str) -> bool:
    """Replace the row's passages with ``row``'s, if the row's vector is still of the text they were cut from.

    Returns False (and writes nothing) when the row changed meanwhile: its next
    embedding makes it lagging again, and its passages are cut from the new text.
    """
    with transaction.atomic(using=using):
        if not still_cut_from(field, row, using):
            return False
        mine = passages_of(field.model, field, using).filter(object_pk=str(row.pk))
        mine.filter(position__gte=len(row.pieces)).delete()
        write(field, row, row.pieces, row.cut_from, spec, using)
        passage_failures(field.model, field, using).filter(object_pk=str(row.pk)).delete()
    return True


def store_partial(field: EmbeddingField, row: Cut, pieces: list[Piece], spec: str, using: str) -> bool:
    """Keep these ``pieces`` of a row whose other passages have no vector yet, marked partial
    (:func:`cut_marker` with ``partial``).

    A long text's passages may take more requests than a worker's task may last: what each
    request paid for is kept, for :func:`known_vectors` to hand to the next run. The row stays
    lagging (its first passage never carries its marker) until :func:`store` writes them all.
    Returns False (and writes nothing) when the row changed meanwhile, as :func:`store`.
    """
    with transaction.atomic(using=using):
        if not still_cut_from(field, row, using):
            return False
        write(field, row, pieces, cut_marker(field, row.row_hash, partial=True), spec, using)
    return True


def still_cut_from(field: EmbeddingField, row: Cut, using: str) -> bool:
    """Whether the row's vector is still of the text ``row`` was cut from."""
    manager = field.model._base_manager.using(using)
    return manager.filter(field.is_current(), pk=row.pk, **{field.embedded_hash_name: row.row_hash}).exists()


def write(field: EmbeddingField, row: Cut, pieces: list[Piece], cut_from: str, spec: str, using: str) -> None:
    """Insert or overwrite these passages of ``row``, by position."""
    Passage.objects.using(using).bulk_create(
        [
            Passage(
                model_label=field.model._meta.label,
                field_name=field.name,
                object_pk=str(row.pk),
                position=piece.position,
                start=piece.start,
                end=piece.end,
                text=piece.text,
                text_hash=piece.text_hash,
                cut_from=cut_from,
                spec=spec,
                vector=piece.vector,
            )
            for piece in pieces
        ],
        update_conflicts=True,
        unique_fields=["model_label", "field_name", "object_pk", "position"],
        update_fields=["start", "end", "text", "text_hash", "cut_from", "spec", "vector"],
    )


def delete_passages(model: type[models.Model], field: EmbeddingField, pks: Iterable[Any], using: str | None) -> int:
    """Delete the passages of these rows; returns how many."""
    deleted, _ = passages_of(model, field, using).filter(object_pk__in=[str(pk) for pk in pks]).delete()
    return deleted


def sweep_orphans(
    model: type[models.Model], field: EmbeddingField, using: str | None = None, pks: Iterable[Any] | None = None
) -> int:
    """Delete passages whose row is gone, or has no text (so no vector) any more; returns how many.

    Rows deleted through the ORM take their passages with them (the save hook's
    ``post_delete``); this finds those deleted behind its back. ``pks`` limits it to those rows.
    """
    table_model = field.model
    manager = table_model._base_manager if using is None else table_model._base_manager.using(using)
    # The stored key cast to the table's key type, so the row is found through its primary key index.
    row = manager.filter(pk=Cast(OuterRef("object_pk"), output_field=table_model._meta.pk))
    live = row.filter(Q(**{f"{field.attname}__isnull": False}) | field.pending())
    passages = passages_of(table_model, field, using)
    if pks is not None:
        passages = passages.filter(object_pk__in=[str(pk) for pk in pks])
    deleted, _ = passages.exclude(Exists(live)).delete()
    return deleted


def passage_status(model: type[models.Model], field: EmbeddingField, rows: models.QuerySet) -> dict[str, Any]:
    """How ``rows``' passages stand, and where characters go: into row vectors or into passages.

    ``rows`` rows whose passages match their text; ``lagging`` rows waiting for theirs;
    ``failed`` rows whose passages could not be embedded; ``passages`` how many there
    are and ``passage_chars`` how much text they hold (overlaps counted twice, as
    sent); ``row_chars`` what the rows' own vectors read (each row's text up to the
    backend's input limit; None when the text comes from Python, which SQL cannot
    measure). At about 4 characters a token, these say what a full re-embedding costs.
    """
    using = rows.db  # the passages and failures beside the rows (semantic.E008), never another database's
    keys = rows.annotate(_semantic_pk=Cast("pk", CharField())).values("_semantic_pk")
    stored = passages_of(model, field, using).filter(object_pk__in=keys, spec=field.spec())
    totals = stored.aggregate(passages=Count("pk"), chars=Sum(Length("text")))
    text = field.stored_source_text()
    row_chars = None
    if text is not None:
        read = Least(Length(text), Value(field.backend.max_input_chars))
        row_chars = rows.filter(field.is_current()).aggregate(chars=Sum(read))["chars"] or 0
    return {
        "rows": current_rows(model, field).using(using).filter(pk__in=rows.values("pk")).count(),
        "lagging": lagging_rows(model, field, using, in_batch_jobs=True).filter(pk__in=rows.values("pk")).count(),
        "failed": passage_failures(model, field, using).filter(object_pk__in=keys).count(),
        "passages": totals["passages"],
        "passage_chars": totals["chars"] or 0,
        "row_chars": row_chars,
    }
