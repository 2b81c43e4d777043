"""The many-to-many hook: rows whose text from Python reads related rows are left pending
when those relations change.

A method or property in ``source`` is hashed when the row is saved. Forms save the row
first and its many-to-many relations after it (the admin's ``save_related()``,
``ModelForm.save_m2m()``, django-taggit's ``tags.set()``), so a source that joins the
row's tags was hashed with the old tags, and the row kept the old tags' vector for good,
counted as embedded. Django (and django-taggit) send ``m2m_changed`` for each change, with
the rows of both sides: ``instance`` and those of ``pk_set``. For each side whose model
has such a field, the rows' hash is emptied, as :func:`semantic.hooks.forget_python_hashes`
does after a raw save, and the worker is woken: a row without a hash is pending, and the
worker hashes it and embeds it only if its text is not the one its vector was made from.
Which relations a method reads is not known, so a change of any of them counts. So does a
row on the other side saved (a tag renamed) or deleted (its links go in a cascade, which sends
no ``m2m_changed``): :func:`on_related_changed`, for relations whose through model has a foreign
key to each side.

Nothing is hashed here: hashing reads each row's related rows in Python, a query per
row in the request that changed the relation, and storing a hash must not skip rows
another transaction holds (the worker's way), or a held row keeps its old tags' vector.
One ``UPDATE`` per field waits for such a row as a save does, whatever the number of rows,
and needs no backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models import Q
from django.db.models.fields.related import ForeignObjectRel
from django.db.models.signals import m2m_changed, post_save, pre_delete

from semantic.dispatch import enqueue
from semantic.fields import EmbeddingField
from semantic.hooks import embedding_suspended
from semantic.registry import embedding_fields


def connect() -> None:
    """Hear the many-to-many relations of the models whose text comes from Python, and no others.

    Django's ``add()`` on a relation nobody listens to is one ``INSERT ... ON CONFLICT DO
    NOTHING``; with a receiver it first reads which rows are linked already, to name the
    new ones in ``pk_set``. A receiver for every sender would cost that query to every
    ``add()`` of the project. The relations are those of the models installed when the
    app is ready.
    """
    for model in apps.get_models():
        if python_fields(model):
            for through in relations(model):
                uid = f"semantic:m2m_changed:{through._meta.label}"
                m2m_changed.connect(on_m2m_changed, sender=through, weak=False, dispatch_uid=uid)
                for related in linked_models(through, model):
                    _readers.setdefault(related, set()).add((model, through))
                    uid = f"semantic:related:{related._meta.label}"
                    pre_delete.connect(on_related_changed, sender=related, weak=False, dispatch_uid=uid)
                    post_save.connect(on_related_changed, sender=related, weak=False, dispatch_uid=uid)


#: For each model on the other side of a relation: the models whose text from Python may read its
#: rows, each with the through model that links them.
_readers: dict[type[models.Model], set[tuple[type[models.Model], type[models.Model]]]] = {}


def linked_models(through: type[models.Model], model: type[models.Model]) -> set[type[models.Model]]:
    """The models ``through`` links to ``model`` by foreign keys (a tag model): a generic relation's
    rows (django-taggit's) hold no foreign key to ``model``, and name none."""
    links = [f.related_model for f in through._meta.fields if f.many_to_one and isinstance(f.related_model, type)]
    if not any(issubclass(model, target) for target in links):
        return set()
    return {source for source in links if source is not model or links.count(model) > 1}


def on_related_changed(
    sender: type[models.Model],
    instance: models.Model,
    using: str | None = None,
    created: bool = False,
    raw: bool = False,
    **kwargs: Any,
) -> None:
    """A linked row renamed or deleted (a tag): the rows that read it are left pending, as a change
    of the relation leaves them. Before a delete, while its links are still there; a new row has no
    links, and a fixture's (``raw``) are loaded after it."""
    if created or raw:
        return
    for model, through in _readers.get(sender, ()):
        keys = linked_keys(through, instance, model, using)
        if keys:
            forget(model, any_of(Q(pk__in=rows) for rows in keys), using)


def relations(model: type[models.Model]) -> set[type[models.Model]]:
    """The through models of the model's many-to-many relations, from either side
    (django-taggit's ``TaggableManager`` is one, through its tagged-item model)."""
    throughs = set()
    for field in model._meta.get_fields(include_hidden=True):
        if field.many_to_many:
            through = field.through if isinstance(field, ForeignObjectRel) else field.remote_field.through
            if isinstance(through, type):  # not a reference to a model that is not installed
                throughs.add(through)
    return throughs


def on_m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    model: type[models.Model],
    pk_set: set[Any] | None,
    using: str | None = None,
    **kwargs: Any,
) -> None:
    """Leave the rows on either side whose text comes from Python pending, with no hash."""
    if action in ("post_add", "post_remove") and pk_set:
        forget(type(instance), Q(pk=instance.pk), using)
        forget(model, Q(pk__in=pk_set), using)
    elif action == "pre_clear":
        # Before the clear, in its transaction: post_clear names no rows of the other side,
        # they are unlinked by then. Through a subquery, so no key is loaded into Python.
        forget(type(instance), Q(pk=instance.pk), using)
        keys = linked_keys(sender, instance, model, using)
        if keys:  # none through a generic relation (django-taggit's), whose rows hold no foreign key to the instance
            forget(model, any_of(Q(pk__in=rows) for rows in keys), using)


def python_fields(model: type[models.Model]) -> list[EmbeddingField]:
    return [field for field in embedding_fields(model) if field.text_from_python()]


def forget(model: type[models.Model], rows: Q, using: str | None) -> None:
    """Empty the hash of each Python field of the ``rows`` of ``model``, and wake the worker."""
    for field in python_fields(model):
        chosen = field.model._base_manager.using(using).filter(rows)
        if chosen.update(**{field.source_hash_name: None}) and not embedding_suspended():
            # The keys are read (now, before a clear unlinks them) only by SYNC's inline run;
            # a worker's wake-up embeds every pending row.
            enqueue(field.model, field.name, chosen.values_list("pk", flat=True), using=using)


def any_of(conditions: Iterable[Q]) -> Q:
    combined = Q()
    for condition in conditions:
        combined |= condition
    return combined


def linked_keys(
    through: type[models.Model], instance: models.Model, model: type[models.Model], using: str | None
) -> list[models.QuerySet[Any]]:
    """Subqueries of the keys of the ``model`` rows that ``through`` links to ``instance``.

    One for every pair of the through model's foreign keys that leads from the instance's
    model to ``model``: both pairs for a relation of a model with itself, which may then
    take in rows that were not cleared (the worker finds their text unchanged).
    """
    links = [f for f in through._meta.fields if f.many_to_one]
    keys = []
    for source in links:
        for target in links:
            if source is not target and isinstance(instance, source.related_model):
                if issubclass(model, target.related_model):
                    rows = through._base_manager.using(using).filter(**{source.name: instance})
                    keys.append(rows.values(f"{target.name}__pk"))
    return keys
