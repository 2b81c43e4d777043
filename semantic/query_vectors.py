"""The vector a search compares rows with, made from what the caller passed.

A text is embedded with the query-side task type that matches the field's stored one, a
model instance gives its stored vector while that is current (else its text's, made now),
and a vector is checked for size and values at the call, not by PostgreSQL when the
queryset is evaluated far from it. Every search starts here: ``similar_to()``,
``with_passage()``, ``hybrid()``, ``context()`` and the admin's search.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import models
from django.db.models import BooleanField
from django.db.models.expressions import ExpressionWrapper
from django.utils.functional import Promise

from semantic.fields import EmbeddingField
from semantic.vectors import EmptyQuery, blank, embed

#: Query-side task type for each stored (document-side) task type.
QUERY_TASK_TYPES = {
    "RETRIEVAL_DOCUMENT": "RETRIEVAL_QUERY",
    "CODE_RETRIEVAL_QUERY": "CODE_RETRIEVAL_QUERY",
}
DOCUMENT_QUERY_TASK_TYPES = ("RETRIEVAL_QUERY", "QUESTION_ANSWERING", "FACT_VERIFICATION")


def query_vector(
    model: type[models.Model],
    field: EmbeddingField,
    query: Any,
    *,
    task_type: str | None = None,
) -> tuple[list[float], Any]:
    """The vector to search with, and the primary key to leave out (for an instance)."""
    if isinstance(query, Promise):  # gettext_lazy(): text, as Django's own fields take it
        query = str(query)
    if isinstance(query, models.Model):
        if not isinstance(query, model):
            raise TypeError(f"similar_to() got a {type(query).__name__}; this queryset holds {model.__name__}.")
        return instance_vector(model, field, query), query.pk
    if isinstance(query, str):
        (vector,) = embed(
            [query],
            task_type=query_task_type(field, task_type),
            dimensions=field.dimensions,
            model=field.embedding_model,
        )
        return vector, None
    # Iterables that are not numbers would fail as "could not convert to float" or a wrong size.
    if isinstance(query, Iterable) and not isinstance(query, (bytes, bytearray, Mapping, models.QuerySet)):
        vector = [float(x) for x in query]
        if len(vector) != field.dimensions:
            raise ValueError(
                f"The query vector has {len(vector)} dimensions; {model._meta.label}.{field.name} "
                f"stores {field.dimensions}."
            )
        if not all(map(math.isfinite, vector)):
            # Caught here, not by PostgreSQL when the queryset is evaluated, far from the call.
            raise ValueError("The query vector holds NaN or infinite values; pass finite numbers.")
        if not any(vector):
            raise ValueError(
                "The query vector is all zeros, which has no direction: its cosine distance to every row "
                "is undefined. Pass a vector with at least one value that is not 0."
            )
        return vector, None
    raise TypeError(f"similar_to() takes a text, a {model.__name__} or a vector, not {type(query).__name__}.")


def instance_vector(model: type[models.Model], field: EmbeddingField, instance: models.Model) -> list[float]:
    """The instance's stored vector if it is current, else a vector of its text made now.

    A stored vector made by another model, task type or size cannot be compared with
    the others, and one made from an older text (the row is pending, or the instance
    was changed in memory) describes a text the instance no longer has. Such a
    vector is never used: the instance's current text is embedded (document-side
    task type, as the stored vectors were, without a title), through the cache and
    the rate limit, and may raise :class:`semantic.SearchUnavailable`.
    """
    if (vector := current_vector(model, field, instance)) is not None:
        return vector
    text = field.source_text(instance)
    if blank(text):
        raise EmptyQuery(f"{model.__name__} #{instance.pk} has no text to search with.")
    (vector,) = embed([text], task_type=field.task_type, dimensions=field.dimensions, model=field.embedding_model)
    return vector


def current_vector(model: type[models.Model], field: EmbeddingField, instance: models.Model) -> list[float] | None:
    """The instance's stored vector if it can be searched with as it is (see :func:`instance_vector`), else None."""
    columns = (field.attname, field.spec_name, "_pending", field.embedded_hash_name)
    pending = ExpressionWrapper(field.pending(), BooleanField())
    rows = model._base_manager.filter(pk=instance.pk).annotate(_pending=pending)
    row = rows.values_list(*columns).first() if instance.pk else None
    if row is not None:
        vector, spec, pending, embedded_hash = row
        if vector is not None and spec == field.spec() and not pending and embedded_hash == field.text_hash(instance):
            return [float(x) for x in vector]
    return None


def query_task_type(field: EmbeddingField, requested: str | None = None) -> str:
    if requested is None:
        return QUERY_TASK_TYPES.get(field.task_type, field.task_type)
    if field.task_type == "RETRIEVAL_DOCUMENT" and requested in DOCUMENT_QUERY_TASK_TYPES:
        return requested
    if requested == QUERY_TASK_TYPES.get(field.task_type, field.task_type):
        return requested
    raise ValueError(f"task_type {requested!r} does not search a {field.task_type} field.")
