"""Comparing two rows of a duplicate review side by side, and the links between the review's pages.

:class:`CompareMixin` is the part of :class:`semantic.admin_duplicates.DuplicateReviewMixin`
that serves the Compare page (two rows' fields as their change forms show them, with links
to delete either and come back) and builds the links that carry a review's state from page
to page (:func:`review_state`).
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import (
    display_for_field,
    display_for_value,
    flatten_fieldsets,
    label_for_field,
    lookup_field,
    quote,
)
from django.core.exceptions import FieldDoesNotExist, ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import models
from django.http import Http404, HttpRequest, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from semantic.companions import CompanionMixin
from semantic.fields import EmbeddingField
from semantic.review import similarities_to

#: Carries the changelist's filters and search through the review, as Django's own views do.
CHANGELIST_FILTERS = "_changelist_filters"
#: On a delete link from the compare page: the review to return to afterwards.
BACK = "_semantic_review"
#: Names the selection of "Find duplicates among selected" in the review's links; the keys
#: themselves stay in the database (:mod:`semantic.admin_selection`).
SELECTION_VAR = "selection"


class CompareMixin:
    """The Compare page and the review's links; leans on :class:`semantic.admin.SemanticAdminMixin`
    for the rows a user may see, the field, the permission hooks and page rendering."""

    compare_template = "semantic/admin/compare.html"

    def compare_view(self, request: HttpRequest) -> TemplateResponse:
        """Two rows' fields side by side, with the way to delete either through Django's own
        confirmation page, or to mark them not duplicates."""
        if not self.has_semantic_view_permission(request):
            raise PermissionDenied
        visible, a, b = self.requested_pair(request, request.GET, _("A row is not compared with itself."))
        if not all(self.has_view_or_change_permission(request, obj) for obj in (a, b)):  # type: ignore[attr-defined]
            raise PermissionDenied  # as the row's change form: the ModelAdmin refuses to show it
        field = self.get_embedding_field()  # type: ignore[attr-defined]
        state = review_state(request.GET)
        back = urlencode([(BACK, urlencode(state))])
        columns = [
            {
                "obj": obj,
                "change_url": self.row_url("change", obj.pk),
                "can_change": self.has_change_permission(request, obj),  # type: ignore[attr-defined]
                "delete_url": f"{self.row_url('delete', obj.pk)}?{back}"
                if self.has_delete_permission(request, obj)  # type: ignore[attr-defined]
                else None,
            }
            for obj in (a, b)
        ]
        context = {
            "columns": columns,
            "lines": self.compare_lines(request, a, b),
            "similarity": similarities_to(visible, a.pk, [b.pk], field).get(b.pk),
            "can_dismiss": self.has_semantic_change_permission(request) and all(c["can_change"] for c in columns),  # type: ignore[attr-defined]
            "kept": state,
            "review_url": self.review_url(state),
            "back_url": self.changelist_back_url(state),
        }
        return self.render_semantic(request, self.compare_template, _("Compare two rows"), context)  # type: ignore[attr-defined]

    def requested_pair(self, request: HttpRequest, data: QueryDict, same_row: str) -> tuple[models.QuerySet, Any, Any]:
        """The rows this user sees, and the two of them ``data`` names (``first``, ``second``);
        404 for a missing, hidden or malformed key, or for one row named twice (``same_row`` says why)."""
        visible = self.semantic_queryset(request)  # type: ignore[attr-defined]
        a, b = (visible_object(visible, data.get(key)) for key in ("first", "second"))
        if a.pk == b.pk:
            raise Http404(same_row)
        return visible, a, b

    def compare_lines(self, request: HttpRequest, a: models.Model, b: models.Model) -> list[tuple[str, list, bool]]:
        """Each field the change form shows of both rows (``get_fieldsets()``, so ``fields``,
        ``exclude``, ``get_fields()`` and ``readonly_fields`` apply): its label, the two values as
        the admin displays them, and whether they differ. A field kept off the form is not shown here either."""
        shown_b = set(flatten_fieldsets(self.get_fieldsets(request, b)))  # type: ignore[attr-defined]
        names = [name for name in flatten_fieldsets(self.get_fieldsets(request, a)) if name in shown_b]  # type: ignore[attr-defined]
        empty = self.get_empty_value_display()  # type: ignore[attr-defined]
        lines = []
        for name in names:
            if isinstance(name, str):
                try:
                    field = self.model._meta.get_field(name)  # type: ignore[attr-defined]
                except FieldDoesNotExist:
                    field = None
                if isinstance(field, (EmbeddingField, CompanionMixin)) or getattr(field, "primary_key", False):
                    continue
            values = [self.compare_value(name, obj, empty) for obj in (a, b)]
            label = capfirst(label_for_field(name, self.model, self))  # type: ignore[attr-defined]
            lines.append((label, values, values[0] != values[1]))
        return lines

    def compare_value(self, name: Any, obj: models.Model, empty: str) -> Any:
        """A field's value, or a readonly field's (a method, a callable), as the change form displays it."""
        try:
            field, attr, value = lookup_field(name, obj, self)
        except (AttributeError, ObjectDoesNotExist):
            return empty
        if field is None:
            return display_for_value(value, empty, boolean=getattr(attr, "boolean", False))
        if field.many_to_many:
            return ", ".join(str(related) for related in value.all()) or empty
        return display_for_field(value, field, empty)

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> Any:
        """After a deletion begun on the compare page, back to the duplicate review it came from."""
        response = super().response_delete(request, obj_display, obj_id)  # type: ignore[misc]
        back = request.GET.get(BACK)
        if back is None or IS_POPUP_VAR in request.POST:
            return response
        return HttpResponseRedirect(self.review_url(review_state(QueryDict(back))))

    # -- links ----------------------------------------------------------------------------

    def duplicate_pk(self, raw: str) -> Any:
        """A primary key from a link; 404 when it cannot be one."""
        try:
            return self.model._meta.pk.to_python(raw)  # type: ignore[attr-defined]
        except (ValueError, ValidationError):
            raise Http404 from None

    def row_url(self, view: str, pk: Any) -> str:
        """A row's change or delete page on this admin site."""
        opts = self.model._meta  # type: ignore[attr-defined]
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_{view}",
            args=[quote(pk)],
            current_app=self.admin_site.name,  # type: ignore[attr-defined]
        )

    def review_url(self, state: list[tuple[str, str]]) -> str:
        url = self.semantic_url("duplicates")  # type: ignore[attr-defined]
        return f"{url}?{urlencode(state)}" if state else url

    def changelist_back_url(self, state: list[tuple[str, str]]) -> str:
        """The list the user came from, with its filters and search, when the action brought them."""
        url = self.semantic_url("changelist")  # type: ignore[attr-defined]
        filters = dict(state).get(CHANGELIST_FILTERS)
        return f"{url}?{filters}" if filters else url


def review_state(data: QueryDict, *, threshold: str | None = None) -> list[tuple[str, str]]:
    """What a duplicate review page was showing (threshold, page, selection, the list's filters),
    as query parameters to come back to it with. Nothing else is carried: no open redirect."""
    threshold = threshold if threshold is not None else data.get("threshold")
    state = [("threshold", threshold)] if threshold else []
    if data.get("page"):
        state.append(("page", data["page"]))
    state += [("id", pk) for pk in data.getlist("id")]
    if data.get(SELECTION_VAR):
        state.append((SELECTION_VAR, data[SELECTION_VAR]))
    if data.get(CHANGELIST_FILTERS):
        state.append((CHANGELIST_FILTERS, data[CHANGELIST_FILTERS]))
    return state


def visible_object(rows: models.QuerySet, pk: Any) -> models.Model:
    """The row with this primary key among ``rows``; 404 for a missing, hidden or malformed key."""
    try:
        return get_object_or_404(rows, pk=pk)
    except (ValueError, ValidationError):
        raise Http404 from None
