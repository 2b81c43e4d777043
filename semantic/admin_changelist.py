"""The admin changelist's search by meaning: its toggle, its ranking and its filter by state.

Django's ChangeList treats every query-string parameter it does not know as a field
lookup, and builds each filter, sort and page link from the parameters it kept. The
"by meaning" toggle (``?semantic=1``) must therefore be a parameter it knows and ignores,
like ``q``: then every link it builds carries the toggle, and no link turns a search by
meaning into a keyword search for the same sentence.

Ranked results carry their similarity as the :data:`SIMILARITY` annotation. Without a
sort chosen in the query string they are ordered by it, and the similarity column, not
the model's default ordering, is the one the headers show as sorted. A sort header the
user clicks sorts those same rows by its column, as Django sorts keyword results, with
the similarity breaking ties (Django's header links keep the columns sorted before).
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IS_FACETS_VAR, IS_POPUP_VAR
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.db import models
from django.http import HttpRequest
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from semantic.status import STATES
from semantic.streaming import BATCH_SIZE

#: The query-string parameter of the "by meaning" toggle.
SEMANTIC_VAR = "semantic"
#: The annotation holding each ranked row's similarity to the search text.
SIMILARITY = "semantic_similarity"
#: The ModelAdmin column that shows it (sorted by it).
SIMILARITY_COLUMN = "search_similarity"
#: The annotation holding each row's embedding state (:data:`semantic.status.STATES`).
STATE_ANNOTATION = "semantic_state"
#: What the admin shows for each state; the states themselves (in URLs, JSON, the status
#: command) stay the words of :data:`semantic.status.STATES`.
STATE_LABELS = {
    "embedded": pgettext_lazy("embedding state", "embedded"),
    "pending": pgettext_lazy("embedding state", "pending"),
    "stale": pgettext_lazy("embedding state", "stale"),
    "failed": pgettext_lazy("embedding state", "failed"),
    "empty": pgettext_lazy("embedding state", "empty"),
}


class EmbeddingStateFilter(admin.SimpleListFilter):
    title = _("embedding")
    parameter_name = "embedding_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state, STATE_LABELS[state]) for state in STATES]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        if self.value() in STATES:
            return queryset.filter(**{STATE_ANNOTATION: self.value()})
        return queryset


def is_ranked(queryset: models.QuerySet) -> bool:
    """True when ``queryset`` holds the results of a search by meaning."""
    return SIMILARITY in queryset.query.annotations


class SemanticChangeList(ChangeList):
    """A ChangeList that keeps the "by meaning" toggle in its links and sorts ranked results.

    A ModelAdmin with a ChangeList of its own should subclass this one instead of
    Django's, or the toggle becomes a field lookup again.
    """

    def get_filters_params(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        lookup_params = super().get_filters_params(params)
        lookup_params.pop(SEMANTIC_VAR, None)
        return lookup_params

    def get_ordering(self, request: HttpRequest, queryset: models.QuerySet) -> list[Any]:
        """Django's ordering, without the similarity column before there is a similarity.

        Django orders the rows before it searches them, so a sort by similarity in the
        query string would name an annotation that does not exist yet; it takes effect
        once the search has ranked the rows (:meth:`get_queryset`).
        """
        ordering = super().get_ordering(request, queryset)
        if is_ranked(queryset):
            return ordering
        return [part for part in ordering if not (isinstance(part, str) and part.lstrip("-") == SIMILARITY)]

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> models.QuerySet:
        queryset = super().get_queryset(request, exclude_parameters)
        if is_ranked(queryset) and ORDER_VAR in self.params:
            # The search replaced the sort the user chose. That sort, even the empty one
            # "remove from sorting" leaves, replaces the ranking as it replaces Django's
            # default ordering; the similarity column is part of it when it is in the link.
            queryset = queryset.order_by(*self.get_ordering(request, queryset.order_by()))
        return queryset

    def get_ordering_field_columns(self) -> dict[int, str]:
        if ORDER_VAR not in self.params and is_ranked(self.queryset) and SIMILARITY_COLUMN in self.list_display:
            return {list(self.list_display).index(SIMILARITY_COLUMN): "desc"}
        return super().get_ordering_field_columns()

    @property
    def show_all_url(self) -> str:
        """Django's "Show all" link (no search, no filters), keeping the toggle as the search box shows it."""
        kept = {key: value for key, value in self.params.items() if key in (IS_POPUP_VAR, IS_FACETS_VAR, SEMANTIC_VAR)}
        return f"?{urlencode(sorted(kept.items()))}"


@functools.cache
def semantic_changelist(base: type[ChangeList]) -> type[SemanticChangeList]:
    """``base`` (the ChangeList the other mixins and Django chose) with the toggle kept in its links."""
    if issubclass(base, SemanticChangeList):
        return base
    return type(f"Semantic{base.__name__}", (SemanticChangeList, base), {})


def changeable_objects(
    model_admin: Any, request: HttpRequest, rows: models.QuerySet, pks: list[Any]
) -> dict[Any, models.Model]:
    """The rows among ``pks`` of ``rows`` this user may change, by key, read in batches:
    ``model_admin`` decides for each (``has_change_permission(request, obj)``, as the row's
    change form asks)."""
    allowed = {}
    for start in range(0, len(pks), BATCH_SIZE):
        for obj in rows.filter(pk__in=pks[start : start + BATCH_SIZE]):
            if model_admin.has_change_permission(request, obj):
                allowed[obj.pk] = obj
    return allowed
