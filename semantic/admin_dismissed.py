"""The admin's list of pairs marked "not a duplicate", naming both rows.

A pair stores a model label and two primary keys as text, so it outlives its rows. The
list holds the pairs of which this user may see a row on this admin site (through its
model's ModelAdmin there; a superuser, every row of a model without one), and those of
models no longer installed, which show no one's rows: the rule of the list of embedding
failures (:func:`semantic.admin_access.site_rows`). It shows each row as its admin would
(``str()``, linked to its change page on this site when it has one) when this user may
see it; a row hidden from them and a row deleted since look alike, so the list never
tells which hidden rows exist. Rows are fetched once per model for the page, not once
per cell.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from semantic.admin_access import site_rows
from semantic.models import DismissedPair

NOT_SHOWN = _("%(pk)s (deleted, or hidden from you)")


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
    """Each stored key of one model: a link to the row, or the key saying it is deleted or hidden."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return {}
    shown: dict[str, Any] = {raw: NOT_SHOWN % {"pk": raw} for raw in raw_pks}
    opts = model._meta
    for obj, raw in visible_rows(model, raw_pks, request, site):
        if model not in site._registry:  # a superuser's: the row's change page is on another site
            shown[raw] = str(obj)
            continue
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)], current_app=site.name)
        shown[raw] = format_html('<a href="{}">{}</a>', url, obj)
    return shown


def visible_rows(
    model: type[models.Model], raw_pks: Iterable[str], request: HttpRequest, site: admin.AdminSite
) -> list[tuple[models.Model, str]]:
    """The rows among stored keys ``raw_pks`` this user may see on ``site``, each with its stored key."""
    rows = site_rows(site, request, model, "view")
    if rows is None:
        return []
    keys = {}
    for raw in raw_pks:
        try:
            keys[model._meta.pk.to_python(raw)] = raw
        except (ValueError, ValidationError):
            continue
    return [(obj, keys[obj.pk]) for obj in rows.filter(pk__in=keys)]


@admin.register(DismissedPair)
class DismissedPairAdmin(admin.ModelAdmin):
    list_display = ["model_label", "field_name", "first_row", "second_row", "dismissed_by", "dismissed_at"]
    list_filter = ["model_label"]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        """The pairs with a row this user may see on this site, and those of models no longer installed."""
        pairs = super().get_queryset(request)
        keys: dict[str, set[str]] = defaultdict(set)
        for label, first, second in pairs.values_list("model_label", "first_pk", "second_pk"):
            keys[label].update((first, second))
        shown = Q(pk__in=[])
        for label, raw_pks in keys.items():
            try:
                model = apps.get_model(label)
            except (LookupError, ValueError):
                shown |= Q(model_label=label)
                continue
            seen = [raw for _, raw in visible_rows(model, raw_pks, request, self.admin_site)]
            if seen:
                shown |= Q(model_label=label) & (Q(first_pk__in=seen) | Q(second_pk__in=seen))
        return pairs.filter(shown)

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
