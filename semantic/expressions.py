"""SQL expressions the field puts into queries and into users' migrations, and
:func:`once_per_statement` for work several parts of one compiled statement share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import models
from django.db.models import Func
from django.utils.deconstruct import deconstructible


@deconstructible(path="semantic.fields.IsDistinctFrom")
class IsDistinctFrom(Func):
    """``a IS DISTINCT FROM b``: inequality where NULL equals NULL.

    The pending index's condition and generated columns written by older versions name it
    in users' migrations as ``semantic.fields.IsDistinctFrom``: it deconstructs to that
    path, which :mod:`semantic.fields` keeps importable.
    """

    template = "(%(expressions)s)"
    arg_joiner = " IS DISTINCT FROM "
    output_field = models.BooleanField()
    conditional = True


class VectorDims(Func):
    """pgvector's ``vector_dims()``: how many dimensions a stored vector has."""

    function = "vector_dims"
    output_field = models.IntegerField()


def once_per_statement(compiler: Any, owner: object, make: Callable[[], Any]) -> Any:
    """``make()``, computed the first time ``owner`` asks while ``compiler`` compiles one
    statement, then given again: a search run once however many of its columns ask for it
    (``hybrid()``), SQL compiled once however many subqueries repeat it (passage searches)."""
    done = compiler.__dict__.setdefault("_semantic_once", {})
    if id(owner) not in done:
        # The owner is kept beside its result, so its id stays its own while the compiler lives.
        done[id(owner)] = (owner, make())
    return done[id(owner)][1]
