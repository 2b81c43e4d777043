"""The save hook: a saved row whose text changed is handed to the worker on commit.

Connected for every model that has an EmbeddingField of its own or through
inheritance: proxies and multi-table children get ``post_save`` under their own class,
so connecting once for the class that declares the field would miss them. Abstract
bases give each concrete subclass a field of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, models
from django.db.models.functions import Now
from django.db.models.signals import class_prepared, post_delete, post_save

from semantic import tenancy
from semantic.companions import forget_source_hash
from semantic.dispatch import enqueue
from semantic.fields import EmbeddingField
from semantic.registry import embedding_fields

_suspended: ContextVar[bool] = ContextVar("semantic_suspended", default=False)


@contextmanager
def suspend_embedding() -> Iterator[None]:
    """Save rows without queueing their embedding (imports, data migrations).

    The rows stay pending in the database; the next sweep or
    ``manage.py semantic_embed`` embeds them.
    """
    token = _suspended.set(True)
    try:
        yield
    finally:
        _suspended.reset(token)


def embedding_suspended() -> bool:
    return _suspended.get()


def connect_all() -> None:
    """Hook every installed model with an EmbeddingField, and any model created later."""
    for model in apps.get_models():
        connect(model)
    class_prepared.connect(_on_class_prepared, weak=False, dispatch_uid="semantic:class_prepared")
    # Migrations build their historical models afresh for each state: one receiver for
    # them all, rather than one connection per short-lived class.
    post_save.connect(on_historical_save, weak=False, dispatch_uid="semantic:historical_save")


def connect(model: type[models.Model]) -> None:
    fields = embedding_fields(model) if not model._meta.abstract else []
    if not fields:
        return
    post_save.connect(on_save, sender=model, weak=False, dispatch_uid=f"semantic:save:{model._meta.label}")
    # Only where passages must go with their rows: a post_delete receiver makes Django load
    # every deleted row (vector included) and call it once per row, instead of one DELETE for
    # a QuerySet.delete() or a cascade. Failure records of rows deleted elsewhere are dropped
    # by the sweep (rows.sweep_orphan_failures), and by the admin's own deletes at once.
    if any(field.passages for field in fields):
        post_delete.connect(on_delete, sender=model, weak=False, dispatch_uid=f"semantic:delete:{model._meta.label}")


def _on_class_prepared(sender: type[models.Model], **kwargs: Any) -> None:
    if sender.__module__ != "__fake__":
        connect(sender)


def on_save(
    sender: type[models.Model],
    instance: models.Model,
    raw: bool = False,
    using: str | None = None,
    update_fields: frozenset[str] | None = None,
    **kwargs: Any,
) -> None:
    """Queue the fields whose text this save changed, once the transaction commits."""
    if raw:
        forget_python_hashes(sender, instance, using)
        return
    for field in embedding_fields(sender):
        if update_fields is not None:
            # Even when suspended: the sweep finds the row only if its columns say it waits.
            complete_partial_save(field, instance, update_fields, using)
        if not embedding_suspended() and needs_work(field, instance, update_fields, using):
            enqueue(field.model, field.name, [instance.pk], using=using)


def on_historical_save(
    sender: type[models.Model],
    instance: models.Model,
    using: str | None = None,
    update_fields: frozenset[str] | None = None,
    **kwargs: Any,
) -> None:
    """Empty the hash of text from Python after a ``save(update_fields=...)`` through a
    migration's historical model.

    A full save empties it in :meth:`EmbeddingField.pre_save`; a save of named columns
    writes only those, so the hash loaded with the row would stay and the row would keep
    a vector of its old text. The historical model has no methods to tell which columns
    the text reads, so any such save leaves the row pending: the worker hashes it and
    embeds it only if its text changed.
    """
    if update_fields is None or sender.__module__ != "__fake__":
        return
    for field in sender._meta.fields:
        if isinstance(field, EmbeddingField) and forget_source_hash(field, instance):
            rows = sender._base_manager.using(using).filter(pk=instance.pk)
            rows.update(**{field.source_hash_name: None})


def forget_python_hashes(sender: type[models.Model], instance: models.Model, using: str | None) -> None:
    """Leave the hash of text from Python unknown after a raw save (``loaddata``,
    django-reversion's ``revert()``), in the saving transaction.

    A raw save writes the hash it was given, which a dump carries from whatever text the
    row held then, and calls no ``pre_save()``; hashing here could read related rows a
    fixture has not loaded yet. A row without a hash is pending: the worker hashes it and
    embeds it only if its text is not the one its vector was made from.
    """
    for field in embedding_fields(sender):
        if field.python_parts and getattr(instance, field.source_hash_name, None) is not None:
            rows = field.model._base_manager.using(using).filter(pk=instance.pk)
            rows.update(**{field.source_hash_name: None})
            setattr(instance, field.source_hash_name, None)


def on_delete(sender: type[models.Model], instance: models.Model, using: str | None = None, **kwargs: Any) -> None:
    """Delete a deleted row's failure records and passages, in the deleting transaction (a
    rollback keeps them all): a record of a row that is gone would be listed, and retried, for ever."""
    # Imported here: this module is imported with the package, before the app's models may be.
    from semantic.passage_rows import delete_passages
    from semantic.rows import forget_deleted

    db = using or DEFAULT_DB_ALIAS
    with tenancy.at_home(sender, db):  # a shared app's row deleted in a tenant's schema: its records are public
        for field in embedding_fields(sender):
            forget_deleted(field, [instance.pk], using)
            if field.passages:
                delete_passages(field.model, field, [instance.pk], using)


def saved_text(field: EmbeddingField, update_fields: frozenset[str] | None) -> bool:
    """Whether a save may have written ``field``'s text (text from Python may change with any column)."""
    return update_fields is None or bool(field.python_parts) or bool(set(field.text_parts()) & set(update_fields))


def complete_partial_save(
    field: EmbeddingField, instance: models.Model, update_fields: frozenset[str], using: str | None
) -> None:
    """Write the hidden columns a ``save(update_fields=...)`` of the text left out.

    Django writes only the columns named, so those a full save keeps current (the hash of
    text from Python, when the row began waiting) are written here, after the text.
    """
    if not saved_text(field, update_fields):
        return
    rows = field.model._base_manager.using(using).filter(pk=instance.pk)
    current = field.text_hash(instance)
    if field.python_parts and field.source_hash_name not in update_fields:
        if current != getattr(instance, field.source_hash_name, None):
            rows.update(**{field.source_hash_name: current})
            setattr(instance, field.source_hash_name, current)
    if field.pending_since_name not in update_fields and current != getattr(instance, field.embedded_hash_name):
        # As PendingSinceField does on a full save: a row already waiting keeps its time.
        rows.filter(field.pending(), **{f"{field.pending_since_name}__isnull": True}).update(
            **{field.pending_since_name: Now()}
        )


def needs_work(
    field: EmbeddingField, instance: models.Model, update_fields: frozenset[str] | None, using: str | None
) -> bool:
    """Whether this save left ``field`` with text its vector was not made from."""
    if not saved_text(field, update_fields):
        return False  # save(update_fields=...) that did not touch the text
    current = field.text_hash(instance)
    if current != getattr(instance, field.embedded_hash_name):
        return True
    return getattr(instance, field.attname) is not None and getattr(instance, field.spec_name) != field.spec()
