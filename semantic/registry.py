"""Which EmbeddingFields a model has: the lookups commands, admin and the worker share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from django.apps import apps
from django.db import models, router

from semantic import tenancy
from semantic.fields import EmbeddingField


def embedding_fields(model: type[models.Model]) -> list[EmbeddingField]:
    """The model's EmbeddingFields, its parents' included (proxies and multi-table children);
    not copies kept by a model built from another's fields (:attr:`EmbeddingField.copied_from`)."""
    return [f for f in model._meta.fields if isinstance(f, EmbeddingField) and f.copied_from is None]


def iter_fields(
    targets: Iterable[str | type[models.Model]] = (),
) -> Iterator[tuple[type[models.Model], EmbeddingField]]:
    """(model, field) for every EmbeddingField of ``targets`` (models or labels; by default all
    models whose tables are where the database connection works: with schemas per tenant, those
    of the public schema or of the tenant's, :func:`semantic.tenancy.has_table`)."""
    models_ = [apps.get_model(t) if isinstance(t, str) else t for t in targets] or [
        model for model in apps.get_models() if tenancy.has_table(model, router.db_for_write(model))
    ]
    for model in models_:
        for field in embedding_fields(model):
            # A proxy's or a multi-table child's rows are embedded with its parent's.
            if field.model is model or len(models_) == 1:
                yield model, field


def get_embedding_field(model: type[models.Model], name: str | None = None) -> EmbeddingField:
    """The model's EmbeddingField called ``name``, or its only one when ``name`` is None."""
    fields = embedding_fields(model)
    label = model._meta.label
    if not fields:
        raise ValueError(f"{label} has no EmbeddingField.")
    if name is None:
        if len(fields) > 1:
            names = ", ".join(f.name for f in fields)
            raise ValueError(f"{label} has several EmbeddingFields ({names}); pass field=<name>.")
        return fields[0]
    for field in fields:
        if field.name == name:
            return field
    names = ", ".join(f.name for f in fields)
    raise ValueError(f"{label} has no EmbeddingField named {name!r}; it has {names}.")
