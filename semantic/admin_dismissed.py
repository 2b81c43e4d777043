"""The admin's list of pairs marked "not a duplicate", naming both rows.

A pair stores a model label and two primary keys as text, so it outlives its rows. The
list shows each row as its admin would (``str()``, linked to its change page) when this
user may see it there, the bare key when the row's admin hides it, and "(deleted)" when
the row is gone. Rows are fetched once per model for the page, not once per cell.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from semantic.models import DismissedPair

DELETED = _("%(pk)s (deleted)")


class PairChangeList(ChangeList):
    """Looks up the rows of the listed pairs once the page's pairs are known."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        describe_rows(self.result_list, request, self.model_admin.admin_site)


def describe_rows(pairs: Iterable[DismissedPair], request: HttpRequest, site: admin.AdminSite) -> None:
    """Set ``semantic_rows`` on each pair: how to show its first and second row."""
    pairs = list(pairs)
    by_label: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        by_label[pair.model_label].update((pair.first_pk, pair.second_pk))
    shown: dict[tuple[str, str], SafeString | str] = {}
    for label, raw_pks in by_label.items():
        shown.update({(label, pk): value for pk, value in rows_of(label, raw_pks, request, site).items()})
    for pair in pairs:
        pair.semantic_rows = {  # type: ignore[attr-defined]
            which: shown.get((pair.model_label, pk), pk)
            for which, pk in (("first", pair.first_pk), ("second", pair.second_pk))
        }


def rows_of(label: str, raw_pks: set[str], request: HttpRequest, site: admin.AdminSite) -> dict[str, Any]:
    """Each stored key of one model: a link, the bare key (hidden from this user), or "(deleted)"."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return {}
    keys = {}
    for raw in raw_pks:
        try:
            keys[raw] = model._meta.pk.to_python(raw)
        except (ValueError, ValidationError):
            continue
    existing = {str(pk) for pk in model._base_manager.filter(pk__in=keys.values()).values_list("pk", flat=True)}
    shown: dict[str, Any] = {raw: DELETED % {"pk": raw} for raw in raw_pks if raw not in existing}
    try:
        model_admin = site.get_model_admin(model)
    except NotRegistered:
        return shown
    if not model_admin.has_view_permission(request):
        return shown
    opts = model._meta
    for obj in model_admin.get_queryset(request).filter(pk__in=keys.values()):
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)], current_app=site.name)
        shown[str(obj.pk)] = format_html('<a href="{}">{}</a>', url, obj)
    return shown


@admin.register(DismissedPair)
class DismissedPairAdmin(admin.ModelAdmin):
    list_display = ["model_label", "field_name", "first_row", "second_row", "dismissed_by", "dismissed_at"]
    list_filter = ["model_label"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return PairChangeList

    @admin.display(description=_("first row"), ordering="first_pk")
    def first_row(self, pair: DismissedPair) -> Any:
        return getattr(pair, "semantic_rows", {}).get("first", pair.first_pk)

    @admin.display(description=_("second row"), ordering="second_pk")
    def second_row(self, pair: DismissedPair) -> Any:
        return getattr(pair, "semantic_rows", {}).get("second", pair.second_pk)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DismissedPair | None = None) -> bool:
        """Read-only: pairs are made by "Not a duplicate", which checks that the user may change
        both rows; an editable form would let anyone name other rows, or another user. Deleting
        one (to see the pair in the review again) stays."""
        return False
