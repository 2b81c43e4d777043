"""Reading a queryset's vectors in batches, so no table is ever loaded whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from django.db import models
from django.db.models import Value
from django.db.models.functions import MD5, Cast, Concat

from semantic.fields import EmbeddingField

BATCH_SIZE = 1000


class Batch(NamedTuple):
    pks: list[Any]
    vectors: np.ndarray
    #: The values of the ``extra`` columns asked for, one tuple per row.
    extra: list[tuple[Any, ...]]


def vector_batches(
    rows: models.QuerySet, embedding: EmbeddingField, size: int = BATCH_SIZE, extra: tuple[str, ...] = ()
) -> Iterator[Batch]:
    """The rows' primary keys, vectors (float32) and ``extra`` columns, ``size`` rows at a time.

    Read through a server-side cursor in primary-key order, so only one batch is in
    memory at once and two passes over unchanged rows see them in the same order.
    """
    stream = rows.order_by("pk").values_list("pk", embedding.attname, *extra).iterator(chunk_size=size)
    pks: list[Any] = []
    vectors: list[Any] = []
    others: list[tuple[Any, ...]] = []
    for row in stream:
        pks.append(row[0])
        vectors.append(row[1])
        others.append(row[2:])
        if len(pks) == size:
            yield Batch(pks, np.asarray(vectors, dtype=np.float32), others)
            pks, vectors, others = [], [], []
    if pks:
        yield Batch(pks, np.asarray(vectors, dtype=np.float32), others)


def pk_batches(rows: models.QuerySet, size: int = BATCH_SIZE) -> Iterator[models.QuerySet]:
    """``rows`` in primary-key order, ``size`` at a time, each batch a queryset of its own."""
    last = None
    ordered = rows.order_by("pk")
    while True:
        page = ordered if last is None else ordered.filter(pk__gt=last)
        pks = list(page.values_list("pk", flat=True)[:size])
        if not pks:
            return
        last = pks[-1]
        yield rows.filter(pk__in=pks).order_by("pk")


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so cosine similarity is a dot product.

    Gemini's vectors below 3,072 dimensions are not unit length.
    """
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def sample_vectors(rows: models.QuerySet, embedding: EmbeddingField, size: int, *, seed: int = 0) -> np.ndarray:
    """Up to ``size`` of the rows' vectors, unit length, the same ones for the same seed.

    Rows are drawn in the order of a hash of their primary key and the seed, so
    the sample does not follow insertion order (which often follows topic or time)
    and repeats from run to run, unlike ``ORDER BY random()``.
    """
    vectors = rows.order_by(sample_order(seed)).values_list(embedding.attname, flat=True)[:size]
    # Shaped rows x dimensions even when no row has a vector (a filtered list may hold none).
    return normalised(np.asarray(list(vectors), dtype=np.float32).reshape(-1, embedding.dimensions))


def sample_order(seed: int) -> MD5:
    """An order of rows by a hash of their primary key and ``seed``: the first rows of it are a
    sample that repeats from run to run, follows neither insertion order nor topic, and changes
    by at most one row when a row is added or deleted."""
    return MD5(Concat(Cast("pk", models.TextField()), Value(f":{seed}"), output_field=models.TextField()))
