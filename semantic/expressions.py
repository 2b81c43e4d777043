"""SQL expressions the field puts into queries and into users' migrations."""

from __future__ import annotations

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
