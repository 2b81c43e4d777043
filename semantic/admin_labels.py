"""Django admin: suggested labels, a column, a filter and an action over :mod:`semantic.classify`.

Switched on by one option of a :class:`semantic.admin.SemanticAdminMixin` admin::

    @admin.register(Ticket)
    class TicketAdmin(SemanticAdminMixin, admin.ModelAdmin):
        semantic_label_field = "category"

The column and the filter show the nearest-neighbour vote of
:func:`~semantic.classify.annotate_predictions`; the action writes
:func:`~semantic.classify.predict_labels` through
:func:`~semantic.classify.apply_predictions` (the same vote, or zero-shot from the
field's choices while nothing is labelled yet), which never overwrites a label a
person set. Only unlabelled rows get a suggestion. The action labels only rows the
ModelAdmin's ``has_change_permission(request, obj)`` allows, as Django's change form and
"Delete selected" ask it of each row, says how many it left out, and logs each row it
labels (``log_change()``: the row's History), as Django's own edits do.

:class:`LabelSuggestionMixin` is a base of ``SemanticAdminMixin`` and uses its
``get_embedding_field()``, ``render_semantic()`` and permission hooks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.views.main import ChangeList
from django.db import models, router, transaction
from django.http import HttpRequest
from django.template.defaultfilters import floatformat
from django.template.response import TemplateResponse
from django.utils import formats
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from semantic.admin_changelist import changeable_objects
from semantic.classify import DEFAULT_K, annotate_predictions, apply_predictions, predict_labels, unlabelled
from semantic.labels import Prediction, label_field_of, labelled
from semantic.streaming import BATCH_SIZE
from semantic.vectors import SearchUnavailable

#: Where a page's suggestion is kept on each row of the changelist: ``(label, confidence)``.
SUGGESTION_ATTRIBUTE = "semantic_suggestion"
FILTER_CHOICES = ("confident", "unsure", "none")
#: Shown instead of a server error when predicting needs the embedding API (zero-shot embeds
#: the choices' names) and it cannot answer now. Every prediction is made before any label is written.
LABELS_UNAVAILABLE = _("Could not suggest labels, so nothing was labelled: {reason}")
#: Selected rows with a suggestion that the ModelAdmin's ``has_change_permission(request, obj)`` refuses
#: (singular, plural): on the confirmation page and after labelling.
LEFT_OUT = (
    "%(count)d row with a suggested label is left out: you may not change it.",
    "%(count)d rows with a suggested label are left out: you may not change them.",
)


class SuggestionFilter(admin.SimpleListFilter):
    """Unlabelled rows by how sure their suggestion is, or that they have none.

    Filtering computes the vote for every unlabelled row of the list (one index
    probe each), not just for one page of them.
    """

    title = _("suggested label")
    parameter_name = "semantic_suggestion"

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        self.model_admin = model_admin
        super().__init__(request, params, model, model_admin)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        threshold = formats.number_format(model_admin.semantic_label_confidence)
        return [
            ("confident", _("confident (%(t)s or more)") % {"t": threshold}),
            ("unsure", _("unsure (below %(t)s)") % {"t": threshold}),
            ("none", _("no suggestion")),
        ]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        if self.value() not in FILTER_CHOICES:
            return queryset
        return self.model_admin.rows_by_suggestion(request, queryset, self.value())


class SuggestionChangeList:
    """Adds each unlabelled row's suggestion to the rows of the page: one query per page."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)  # type: ignore[misc]
        rows = list(self.result_list)  # type: ignore[attr-defined]  # fills the queryset's cache: these objects are shown
        found = self.model_admin.suggestions(request, [row.pk for row in rows])  # type: ignore[attr-defined]
        names = self.model_admin.label_names({value for value, _ in found.values()})  # type: ignore[attr-defined]
        for row in rows:
            value, confidence = found.get(row.pk, (None, None))
            setattr(row, SUGGESTION_ATTRIBUTE, None if confidence is None else (names[value], confidence))


@functools.cache
def suggestion_changelist(base: type[ChangeList]) -> type[ChangeList]:
    return type(f"Suggestion{base.__name__}", (SuggestionChangeList, base), {})


class MinConfidenceForm(forms.Form):
    min_confidence = forms.FloatField(label=_("Minimum confidence"), min_value=0.0, max_value=1.0)


class LabelSuggestionMixin:
    """The suggested-label column, filter and "Apply suggested labels" action."""

    #: The field that holds labels (choices, CharField or ForeignKey); None leaves all of this off.
    semantic_label_field: str | None = None
    #: Neighbours that vote (see semantic.classify.DEFAULT_K).
    semantic_label_k = DEFAULT_K
    #: Where the filter splits "confident" from "unsure", and the action's starting minimum.
    semantic_label_confidence = 0.8
    apply_labels_template = "semantic/admin/apply_labels.html"

    # -- what the features share --------------------------------------------------------------

    def label_examples(self, request: HttpRequest) -> models.QuerySet | None:
        """The labelled rows suggestions learn from: those this user may see.

        None (every row of the model, the library's default) when ``get_queryset()``
        hides nothing, so the vote's subquery stays the plain index search. Otherwise the
        model's rows whose keys it admits, as ``semantic_queryset()`` has them: the vote
        correlates its examples with each row, and ``get_queryset()`` itself may carry
        what a correlated subquery cannot (a ``Count()`` column's GROUP BY, ``distinct()``).
        """
        visible = self.get_queryset(request)  # type: ignore[attr-defined]
        if not visible.query.where:
            return None
        return self.model._default_manager.using(visible.db).filter(pk__in=visible.values("pk"))  # type: ignore[attr-defined]

    def label_options(self, request: HttpRequest) -> dict[str, Any]:
        return {
            "field": self.get_embedding_field().name,  # type: ignore[attr-defined]
            "k": self.semantic_label_k,
            "examples": self.label_examples(request),
        }

    def suggestions(self, request: HttpRequest, pks: list[Any]) -> dict[Any, tuple[Any, float]]:
        """``{pk: (label, confidence)}`` for the unlabelled rows among ``pks``, in one query."""
        if not pks:
            return {}
        label = self.semantic_label_field
        rows = unlabelled(self.model._default_manager.filter(pk__in=pks), label, field=self.get_embedding_field().name)  # type: ignore[attr-defined]
        annotated = annotate_predictions(rows, label, **self.label_options(request))  # type: ignore[arg-type]
        return {
            pk: (value, confidence)
            for pk, value, confidence in annotated.values_list("pk", "predicted_label", "confidence")
            if confidence is not None
        }

    def rows_by_suggestion(self, request: HttpRequest, queryset: models.QuerySet, choice: str) -> models.QuerySet:
        label = self.semantic_label_field
        field = label_field_of(self.model, label)  # type: ignore[arg-type, attr-defined]
        rows = annotate_predictions(queryset.exclude(labelled(field)), label, **self.label_options(request))  # type: ignore[arg-type]
        threshold = self.semantic_label_confidence
        if choice == "confident":
            return rows.filter(confidence__gte=threshold)
        if choice == "unsure":
            return rows.filter(confidence__lt=threshold)
        return rows.filter(confidence__isnull=True)

    def label_names(self, values: Iterable[Any]) -> dict[Any, str]:
        """Labels as the admin shows the field: a choice's name, a related row's ``str()``
        (one query for all of them), or the value itself."""
        values = set(values)
        field = label_field_of(self.model, self.semantic_label_field)  # type: ignore[arg-type, attr-defined]
        if field.choices:
            choices = dict(field.flatchoices)
            return {value: str(choices.get(value, value)) for value in values}
        if field.is_relation:
            related = field.related_model._default_manager.in_bulk(values, field_name=field.target_field.name)
            return {value: str(related.get(value, value)) for value in values}
        return {value: str(value) for value in values}

    # -- changelist -----------------------------------------------------------------------------

    @admin.display(description=_("suggested label"))
    def suggested_label(self, obj: models.Model) -> str | None:
        found = getattr(obj, SUGGESTION_ATTRIBUTE, None)
        if found is None:
            return None
        name, confidence = found
        return f"{name} ({floatformat(confidence, 2)})"

    def suggests_labels(self, request: HttpRequest) -> bool:
        """The list suggests labels: ``semantic_label_field`` is set, and ``has_semantic_view_permission()`` allows."""
        return bool(self.semantic_label_field) and self.has_semantic_view_permission(request)  # type: ignore[attr-defined]

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        shown = [*super().get_list_display(request)]  # type: ignore[misc]
        return [*shown, "suggested_label"] if self.suggests_labels(request) else shown

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        filters = [*super().get_list_filter(request)]  # type: ignore[misc]
        return [*filters, SuggestionFilter] if self.suggests_labels(request) else filters

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        base = super().get_changelist(request, **kwargs)  # type: ignore[misc]
        return suggestion_changelist(base) if self.suggests_labels(request) else base

    # -- the action -----------------------------------------------------------------------------

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        """``action_location`` is Django 6.1's (change list or change form; 5.2 passes none):
        passed on as it came, and Django's get_action() leaves out the app's actions, which are
        the change list's, where they do not belong."""
        located = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **located)  # type: ignore[misc]
        if self.actions is None or IS_POPUP_VAR in request.GET:  # type: ignore[attr-defined]
            return actions  # where Django offers no action: turned off, or a lookup popup for picking a row
        if self.semantic_label_field and self.has_semantic_change_permission(request):  # type: ignore[attr-defined]
            if action := self.get_action("apply_suggested_labels", **located):  # type: ignore[attr-defined]
                actions["apply_suggested_labels"] = action
        return actions

    @admin.action(description=_("Apply suggested labels"), permissions=["semantic_change"])
    def apply_suggested_labels(self, request: HttpRequest, queryset: models.QuerySet) -> TemplateResponse | None:
        """First a page that says how many rows a minimum confidence would label; then, confirmed, label them.

        Like Django's delete confirmation, the page posts the same selection back to
        the changelist with ``post=yes``. Predictions are made afresh when applying.
        """
        label = self.semantic_label_field
        confirmed = request.POST.get("post") == "yes"
        form = MinConfidenceForm(
            request.POST if "min_confidence" in request.POST else None,
            initial={"min_confidence": self.semantic_label_confidence},
        )
        if confirmed and form.is_valid():
            minimum = form.cleaned_data["min_confidence"]
            try:
                predictions = predict_labels(queryset, label, **self.label_options(request))  # type: ignore[arg-type]
                chosen = [p for p in predictions if p.confidence >= minimum]
            except (SearchUnavailable, ValueError) as exc:  # ValueError: NO_EXAMPLES, nothing to learn from
                return self.labels_unavailable(request, exc)
            allowed = self.changeable_rows(request, queryset, [p.pk for p in chosen])
            written = self.write_labels(request, [p for p in chosen if p.pk in allowed], allowed)
            self.message_user(  # type: ignore[attr-defined]
                request,
                ngettext(
                    "Labelled %(count)d row with its suggested label (confidence %(minimum)s or more).",
                    "Labelled %(count)d rows with their suggested labels (confidence %(minimum)s or more).",
                    written,
                )
                % {"count": written, "minimum": formats.number_format(minimum)},
                messages.SUCCESS,
            )
            if left_out := len(chosen) - len(allowed):
                self.message_user(request, ngettext(*LEFT_OUT, left_out) % {"count": left_out}, messages.WARNING)  # type: ignore[attr-defined]
            return None
        minimum = form.cleaned_data["min_confidence"] if form.is_bound and form.is_valid() else None
        if minimum is None and not form.is_bound:
            minimum = self.semantic_label_confidence
        try:
            predictions = list(predict_labels(queryset, label, **self.label_options(request)))  # type: ignore[arg-type]
        except (SearchUnavailable, ValueError) as exc:
            return self.labels_unavailable(request, exc)
        chosen = [p for p in predictions if minimum is not None and p.confidence >= minimum]
        allowed = self.changeable_rows(request, queryset, [p.pk for p in chosen])
        left_out = len(chosen) - len(allowed)
        chosen = [p for p in chosen if p.pk in allowed]
        by_label: dict[Any, int] = {}
        for prediction in chosen:
            by_label[prediction.label] = by_label.get(prediction.label, 0) + 1
        names = self.label_names(by_label)
        context = {
            "form": form,
            "selected_count": queryset.count(),
            "unlabelled_count": queryset.exclude(labelled(label_field_of(self.model, label))).count(),  # type: ignore[arg-type, attr-defined]
            "suggested_count": len(predictions),
            "would_change": len(chosen),
            "left_out": ngettext(*LEFT_OUT, left_out) % {"count": left_out} if left_out else "",
            "minimum": minimum,
            "by_label": sorted(((names[v], n) for v, n in by_label.items()), key=lambda i: (-i[1], i[0])),
            "select_across": request.POST.get("select_across") == "1",
            "selected_pks": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_name": "apply_suggested_labels",
            "back_url": request.get_full_path(),
        }
        return self.render_semantic(request, self.apply_labels_template, _("Apply suggested labels"), context)  # type: ignore[attr-defined]

    def changeable_rows(self, request: HttpRequest, queryset: models.QuerySet, pks: list[Any]) -> dict[Any, Any]:
        """The rows among ``pks`` this user may change, by key: the ModelAdmin decides for each row."""
        return changeable_objects(self, request, queryset, pks)

    def write_labels(self, request: HttpRequest, predictions: list[Prediction], rows: dict[Any, Any]) -> int:
        """Write the predictions as ``semantic_classify`` does (never over a label set meanwhile)
        and log a change for each row written; returns how many."""
        label = self.semantic_label_field
        field = label_field_of(self.model, label)  # type: ignore[arg-type, attr-defined]
        # Where the router writes the rows, as "Re-embed" does: the queryset's database is
        # where they are read from, maybe a replica that refuses writes.
        using = router.db_for_write(self.model)  # type: ignore[attr-defined]
        message = [{"changed": {"fields": [capfirst(field.verbose_name)]}}]
        written = 0
        for start in range(0, len(predictions), BATCH_SIZE):
            batch = predictions[start : start + BATCH_SIZE]
            with transaction.atomic(using=using):
                # Locked, so the rows still unlabelled now are exactly the ones written and logged.
                rows_left = self.model._base_manager.using(using).select_for_update()  # type: ignore[attr-defined]
                open_pks = set(
                    rows_left.filter(pk__in=[p.pk for p in batch]).exclude(labelled(field)).values_list("pk", flat=True)
                )
                batch = [p for p in batch if p.pk in open_pks]
                written += apply_predictions(iter(batch), self.model, label, using=using)  # type: ignore[arg-type, attr-defined]
                for prediction in batch:
                    obj = rows[prediction.pk]
                    setattr(obj, field.attname, prediction.label)
                    self.log_change(request, obj, message)  # type: ignore[attr-defined]
        return written

    def labels_unavailable(self, request: HttpRequest, error: SearchUnavailable | ValueError) -> None:
        """Back to the changelist with a warning: the user may try again once the API answers,
        or once some rows are labelled (the library's NO_EXAMPLES says which)."""
        self.message_user(request, LABELS_UNAVAILABLE.format(reason=error), messages.WARNING)  # type: ignore[attr-defined]
