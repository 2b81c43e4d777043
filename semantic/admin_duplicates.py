"""Duplicate review in the admin: the "Find duplicates among selected" action, the review
page, "Not a duplicate", and the list of pairs marked so.

:class:`DuplicateReviewMixin` is one part of :class:`semantic.admin.SemanticAdminMixin`
(which users add to their ModelAdmin); it leans on that class for the rows a user may
see (``semantic_queryset``), the field, the permission hooks and page rendering.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import models
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _

from semantic.models import DismissedPair
from semantic.query import DEFAULT_DUPLICATE_THRESHOLD, SemanticQuerySet, check_threshold
from semantic.review import review_groups


class DuplicateReviewMixin:
    """Duplicate review pages and action for a ModelAdmin (through SemanticAdminMixin)."""

    #: Starting threshold of duplicate review (adjustable on the page).
    duplicate_threshold = DEFAULT_DUPLICATE_THRESHOLD
    #: Groups per page of duplicate review; "Find duplicates among selected" shows the first page only.
    duplicate_groups_per_page = 20
    #: Pairs shown of each group, most similar first. At a low threshold one group can hold most
    #: of the table; the page says how many pairs it left out.
    duplicate_pairs_shown = 10
    duplicates_template = "semantic/admin/duplicates.html"

    @admin.action(description=_("Find duplicates among selected"), permissions=["semantic_view"])
    def find_duplicates(self, request: HttpRequest, queryset: models.QuerySet) -> TemplateResponse:
        visible = self.semantic_queryset(request).filter(pk__in=queryset.values("pk"))
        return self.duplicate_page(request, visible, selected=True)

    def get_urls(self) -> list[Any]:
        opts = self.model._meta  # type: ignore[attr-defined]
        wrap = self.admin_site.admin_view  # type: ignore[attr-defined]
        name = f"{opts.app_label}_{opts.model_name}"
        return [
            path("duplicates/", wrap(self.duplicates_view), name=f"{name}_duplicates"),
            path("duplicates/dismiss/", wrap(self.dismiss_view), name=f"{name}_dismiss_duplicate"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def duplicates_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_semantic_view_permission(request):
            raise PermissionDenied
        return self.duplicate_page(request, self.semantic_queryset(request))

    def dismiss_view(self, request: HttpRequest) -> HttpResponseRedirect:
        if request.method != "POST" or not self.has_semantic_change_permission(request):
            raise PermissionDenied
        visible = self.semantic_queryset(request)
        a, b = (visible_object(visible, request.POST.get(key)) for key in ("first", "second"))
        first, second = DismissedPair.ordered(a.pk, b.pk)
        DismissedPair.objects.get_or_create(
            model_label=self.model._meta.label,  # type: ignore[attr-defined]
            field_name=self.get_embedding_field().name,
            first_pk=first,
            second_pk=second,
            defaults={"dismissed_by": request.user.get_username()},
        )
        self.message_user(request, _("Marked “%(a)s” and “%(b)s” as not duplicates.") % {"a": a, "b": b})  # type: ignore[attr-defined]
        kept = {key: request.POST[key] for key in ("threshold", "page") if request.POST.get(key)}
        url = self.semantic_url("duplicates")
        return HttpResponseRedirect(f"{url}?{urlencode(kept)}" if kept else url)

    def duplicate_page(
        self, request: HttpRequest, rows: SemanticQuerySet, *, selected: bool = False
    ) -> TemplateResponse:
        """Groups of likely duplicates, a page of groups at a time, each cut to its most similar pairs.

        The search runs over one database connection (``workers=1``): a request must not
        open as many connections as the server has cores.
        """
        threshold, shown_threshold, error = self.duplicate_page_threshold(request)
        field = self.get_embedding_field()
        page = None
        if error is None:
            dismissed = set(
                DismissedPair.objects.filter(
                    model_label=self.model._meta.label,  # type: ignore[attr-defined]
                    field_name=field.name,
                ).values_list("first_pk", "second_pk")
            )
            pairs = [
                (a, b, s)
                for a, b, s in rows.duplicates(threshold, field=field.name, workers=1)
                if DismissedPair.ordered(a.pk, b.pk) not in dismissed
            ]
            groups = review_groups(pairs, pairs_shown=self.duplicate_pairs_shown)
            # An action's page is the answer to a POST: it has no further pages to link to.
            number = 1 if selected else request.GET.get("page")
            page = Paginator(groups, self.duplicate_groups_per_page).get_page(number)
        context = {
            "groups": list(page) if page else [],
            "page": page,
            "threshold": shown_threshold,
            "threshold_error": error,
            "selected": selected,
            "can_dismiss": self.has_semantic_change_permission(request),
        }
        return self.render_semantic(request, self.duplicates_template, _("Likely duplicates"), context)

    def duplicate_page_threshold(self, request: HttpRequest) -> tuple[float, str, str | None]:
        """The threshold to search with, the one to show in the form (the user's own, even when
        it is wrong), and what is wrong with it."""
        raw = (request.GET.get("threshold") or request.POST.get("threshold") or "").strip()
        if not raw:
            return self.duplicate_threshold, str(self.duplicate_threshold), None
        try:
            value = float(raw)
            check_threshold(value, "threshold")
        except ValueError:
            return self.duplicate_threshold, raw, _("The threshold must be a number from -1 to 1; “%s” is not.") % raw
        return value, raw, None


def visible_object(rows: models.QuerySet, pk: Any) -> models.Model:
    """The row with this primary key among ``rows``; 404 for a missing, hidden or malformed key."""
    try:
        return get_object_or_404(rows, pk=pk)
    except (ValueError, ValidationError):
        raise Http404 from None


@admin.register(DismissedPair)
class DismissedPairAdmin(admin.ModelAdmin):
    list_display = ["model_label", "field_name", "first_pk", "second_pk", "dismissed_by", "dismissed_at"]
    list_filter = ["model_label"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
