"""What a label is: the field that holds it, which rows have one, and a prediction of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import Q

NO_EXAMPLES = (
    "{label} has no labelled rows with vectors of the current model and {field!r} has no choices "
    "to start from: label some rows (rows labelled before a change of model count again once "
    "re-embedded), or give the field choices."
)
NOT_A_COLUMN = "{label}.{field} is not a column; labels need a field with choices, a CharField or a ForeignKey."


@dataclass(frozen=True)
class Prediction:
    """A suggested label for the row ``pk`` and how sure the suggestion is (0 to 1)."""

    pk: Any
    label: Any
    confidence: float


def label_field_of(model: type[models.Model], label: str) -> models.Field:
    try:
        field = model._meta.get_field(label)
    except FieldDoesNotExist:
        raise ValueError(f"{model._meta.label} has no field {label!r} to hold labels.") from None
    if not getattr(field, "concrete", False) or field.many_to_many:
        raise ValueError(NOT_A_COLUMN.format(label=model._meta.label, field=label))
    return field  # type: ignore[return-value]


def labelled(field: models.Field) -> Q:
    """Rows a person has labelled: label neither NULL nor empty."""
    condition = Q(**{f"{field.attname}__isnull": False})
    if isinstance(field, (models.CharField, models.TextField)):
        condition &= ~Q(**{field.attname: ""})
    return condition
