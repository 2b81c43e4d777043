"""The many-to-many hook: rows whose text from Python reads related rows are hashed again
when those relations change.

A method or property in ``source`` is hashed when the row is saved. Forms save the row
first and its many-to-many relations after it (the admin's ``save_related()``,
``ModelForm.save_m2m()``, django-taggit's ``tags.set()``), so a source that joins the
row's tags was hashed with the old tags, and the row kept the old tags' vector for good,
counted as embedded. Django (and django-taggit) send ``m2m_changed`` for each change, with
the rows of both sides: ``instance`` and those of ``pk_set``. For each side whose model
has such a field, the rows are hashed again as ``semantic_embed --rehash`` does
(:func:`semantic.backfill.rehash`, no API call) and the worker is woken when their text
changed. Which relations a method reads is not known, so a change of any of them counts;
a row whose text did not change is left as it is.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import m2m_changed

from semantic.backfill import rehash
from semantic.dispatch import enqueue
from semantic.fields import EmbeddingField
from semantic.hooks import embedding_suspended
from semantic.registry import embedding_fields

#: Where ``pre_clear`` keeps, on the instance, the keys of the rows a clear() is about to unlink.
CLEARED = "_semantic_cleared"


def connect() -> None:
    m2m_changed.connect(on_m2m_changed, weak=False, dispatch_uid="semantic:m2m_changed")


def on_m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    model: type[models.Model],
    pk_set: set[Any] | None,
    using: str | None = None,
    **kwargs: Any,
) -> None:
    """Hash again, after the change, the rows on either side whose text comes from Python."""
    if action == "pre_clear":
        # post_clear names no rows of the other side: they are unlinked by then.
        if python_fields(model):
            instance.__dict__.setdefault(CLEARED, {})[sender] = linked_pks(sender, instance, model, using)
        return
    if action == "post_clear":
        others = instance.__dict__.get(CLEARED, {}).pop(sender, [])
    elif action in ("post_add", "post_remove") and pk_set:
        others = list(pk_set)
    else:
        return  # a pre_ action, or an add or remove that changed nothing
    rehash_rows(type(instance), [instance.pk], using)
    rehash_rows(model, others, using)


def python_fields(model: type[models.Model]) -> list[EmbeddingField]:
    return [field for field in embedding_fields(model) if field.text_from_python()]


def rehash_rows(model: type[models.Model], pks: list[Any], using: str | None) -> None:
    """Store the new hash of each row's text; wake the worker if any row's text changed."""
    if not pks:
        return
    for field in python_fields(model):
        _, changed = rehash(model, field, pks, using=using)
        if changed and not embedding_suspended():
            enqueue(field.model, field.name, pks, using=using)


def linked_pks(
    through: type[models.Model], instance: models.Model, model: type[models.Model], using: str | None
) -> list[Any]:
    """Keys of the ``model`` rows that ``through`` links to ``instance``.

    Through every pair of the through model's foreign keys that leads from the instance's
    model to ``model``: both pairs for a relation of a model with itself, which may then
    take in rows that were not cleared (hashed again, they are left alone).
    """
    links = [f for f in through._meta.fields if f.many_to_one]
    pks: set[Any] = set()
    for source in links:
        for target in links:
            if source is not target and isinstance(instance, source.related_model):
                if issubclass(model, target.related_model):
                    rows = through._base_manager.using(using).filter(**{source.name: instance})
                    pks.update(rows.values_list(f"{target.name}__pk", flat=True))
    return list(pks)
