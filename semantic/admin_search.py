"""Django admin: the changelist's search box by meaning, and its similarity column.

With the "by meaning" toggle on (:data:`~semantic.admin_changelist.SEMANTIC_VAR`), or on a
ModelAdmin without ``search_fields``, the box returns the rows nearest to its text among
those the list's filters keep, most similar first, with a similarity column. When the
text cannot be embedded now, a box with keyword search falls back to it and says so; a
box without shows no rows and says why, never every row as if they all matched.

:class:`MeaningSearchMixin` is a base of ``SemanticAdminMixin`` and uses its
``get_embedding_field()`` and ``semantic_queryset()``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import models
from django.db.models import Value
from django.http import HttpRequest
from django.template.defaultfilters import floatformat
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from pgvector.django import CosineDistance

from semantic.admin_changelist import SEMANTIC_VAR, SIMILARITY
from semantic.query import vector_literal, with_semantic_methods
from semantic.query_vectors import query_vector
from semantic.vectors import EmptyQuery, SearchUnavailable

#: Shown instead of a server error when the embedding API cannot answer a query now.
SEARCH_UNAVAILABLE = _("Search by meaning is unavailable right now ({reason}); showing results without it.")
#: The same, for a search box with no keyword search to fall back to.
MEANING_ONLY_UNAVAILABLE = _("Search by meaning is unavailable right now ({reason}); try again later.")
#: Said when the search text holds nothing to embed and there is no keyword search to run instead.
NOTHING_TO_SEARCH = _("Nothing to search by meaning in “{query}”.")
#: How many rows a search by meaning returns, most similar first.
MEANING_RESULTS = 100


class MeaningSearchMixin:
    """The changelist's search by meaning (see the module's docstring)."""

    @admin.display(description=_("similarity"), ordering=SIMILARITY)
    def search_similarity(self, obj: models.Model) -> str:
        """The row's similarity to the search text, as a number (written as the page's language
        writes numbers) and a bar.

        The bar is a ``<meter>``, whose length is an attribute: a width in a ``style``
        attribute is refused by a Content-Security-Policy without 'unsafe-inline'. It draws
        the number beside it, so it is hidden from screen readers, which would read the
        value twice, the second time as an unnamed meter.
        """
        value = getattr(obj, SIMILARITY, None)
        if value is None:
            return self.get_empty_value_display()  # type: ignore[attr-defined]
        return format_html(
            '<span class="semantic-match"><meter class="semantic-bar" min="0" max="1" value="{}" aria-hidden="true">'
            '</meter> <span class="semantic-score">{}</span></span>',
            f"{max(0.0, min(1.0, value)):.3f}",
            floatformat(value, 3),
        )

    def searches_by_meaning(self, request: HttpRequest) -> bool:
        """The toggle is on, or there is no keyword search: the box then searches by meaning only.
        Never for a user ``has_semantic_view_permission()`` refuses: Django's own search then."""
        if not self.has_semantic_view_permission(request):  # type: ignore[attr-defined]
            return False
        return request.GET.get(SEMANTIC_VAR) == "1" or not self.get_search_fields(request)  # type: ignore[attr-defined]

    def get_search_results(self, request: HttpRequest, queryset: models.QuerySet, search_term: str) -> Any:
        """With the "by meaning" toggle on, or no ``search_fields``, the rows nearest to the search text.

        A box without ``search_fields`` searches by meaning only: when that cannot run, it
        shows no rows and says why, never every row as if they all matched.
        """
        if not self.searches_by_meaning(request):
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        keyword = bool(self.get_search_fields(request))  # type: ignore[attr-defined]
        if not search_term.strip():
            return queryset, False
        field = self.get_embedding_field()  # type: ignore[attr-defined]
        try:
            # Among the rows the list's filters keep (``queryset``), not the table's nearest filtered afterwards.
            nearest = list(
                self.semantic_queryset(request, queryset)  # type: ignore[attr-defined]
                .similar_to(search_term, field=field.name)
                .values_list("pk", flat=True)[:MEANING_RESULTS]
            )
            vector, _ = query_vector(self.model, field, search_term)  # type: ignore[attr-defined]
        except EmptyQuery:  # nothing to embed (control characters): an ordinary search
            if not keyword:
                self.message_user(request, NOTHING_TO_SEARCH.format(query=search_term), messages.WARNING)  # type: ignore[attr-defined]
                return queryset.none(), False
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        except SearchUnavailable as exc:
            message = SEARCH_UNAVAILABLE if keyword else MEANING_ONLY_UNAVAILABLE
            self.message_user(request, message.format(reason=exc), messages.WARNING)  # type: ignore[attr-defined]
            if not keyword:
                return queryset.none(), False
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        similarity = Value(1.0) - CosineDistance(field.indexed_vector(), Value(vector_literal(vector)))
        # With the mixin, a QuerySet that copies annotations onto the rows it builds (model-utils'
        # select_subclasses()) is told of the state column too, which this annotate() would drop.
        ranked = with_semantic_methods(queryset.filter(pk__in=nearest)).annotate(**{SIMILARITY: similarity})
        # Django sorted the rows before this search; SemanticChangeList puts a sort the user chose back first.
        return ranked.order_by(f"-{SIMILARITY}", "-pk"), False
