"""Django admin: "Find similar", duplicate review and re-embedding (the embedding status
page is in :mod:`semantic.admin_status`).

Add :class:`SemanticAdminMixin` to the ModelAdmin of any model with an EmbeddingField::

    @admin.register(Question)
    class QuestionAdmin(SemanticAdminMixin, admin.ModelAdmin):
        list_display = ["title"]

Every page and action shows only rows ``get_queryset()`` admits, and needs the view
permission (change, for re-embedding and marking pairs "not a duplicate").
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import models
from django.db.models import Value
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from pgvector.django import CosineDistance

from semantic.admin_labels import LabelSuggestionMixin
from semantic.admin_status import EmbeddingFailureAdmin
from semantic.admin_topics import TopicsMixin
from semantic.embed import EmptyQuery, SearchUnavailable
from semantic.fields import EmbeddingField
from semantic.models import DismissedPair, EmbeddingBatchJob, EmbeddingFailure
from semantic.query import (
    DEFAULT_DUPLICATE_THRESHOLD,
    SemanticQuerySet,
    check_threshold,
    query_vector,
    vector_literal,
)
from semantic.review import review_groups
from semantic.rows import forget_failures, mark_pending
from semantic.status import STATES, with_state
from semantic.switch import serving_field
from semantic.tasks import enqueue

STATE_ANNOTATION = "semantic_state"
#: Shown instead of a server error when the embedding API cannot answer a query now.
SEARCH_UNAVAILABLE = _("Search by meaning is unavailable right now ({reason}); showing results without it.")


class EmbeddingStateFilter(admin.SimpleListFilter):
    title = _("embedding")
    parameter_name = "embedding_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state, state) for state in STATES]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        if self.value() in STATES:
            return queryset.filter(**{STATE_ANNOTATION: self.value()})
        return queryset


class SemanticAdminMixin(LabelSuggestionMixin, TopicsMixin):
    """Semantic actions, pages, list column and filter for a ModelAdmin (suggested labels: :mod:`semantic.admin_labels`;
    the Topics page: :mod:`semantic.admin_topics`)."""

    #: Which EmbeddingField to use; None when the model has just one.
    semantic_field: str | None = None
    #: How many neighbours "Find similar" and the change form show.
    similar_count = 5
    #: How many selected rows "Find similar" answers for (one search each); the page says when it left some out.
    similar_rows_shown = 20
    #: Starting threshold of duplicate review (adjustable on the page).
    duplicate_threshold = DEFAULT_DUPLICATE_THRESHOLD
    #: Groups per page of duplicate review; "Find duplicates among selected" shows the first page only.
    duplicate_groups_per_page = 20
    #: Pairs shown of each group, most similar first. At a low threshold one group can hold most
    #: of the table; the page says how many pairs it left out.
    duplicate_pairs_shown = 10
    similar_template = "semantic/admin/similar.html"
    duplicates_template = "semantic/admin/duplicates.html"
    change_form_template = "semantic/admin/change_form.html"
    change_list_template = "semantic/admin/change_list.html"

    # -- permissions (override to taste) ------------------------------------------------

    def has_semantic_view_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)  # type: ignore[attr-defined]

    def has_semantic_change_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request)  # type: ignore[attr-defined]

    # -- the field and the rows ------------------------------------------------------------

    def get_embedding_field(self) -> EmbeddingField:
        return serving_field(self.model, self.semantic_field)  # type: ignore[attr-defined]

    def semantic_queryset(self, request: HttpRequest) -> SemanticQuerySet:
        """The rows this user may see (``get_queryset()``), as a SemanticQuerySet."""
        visible = self.get_queryset(request)  # type: ignore[attr-defined]
        rows = SemanticQuerySet(self.model, using=visible.db)  # type: ignore[attr-defined]
        return rows.filter(pk__in=visible.values("pk")) if visible.query.where else rows

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        qs = super().get_queryset(request)  # type: ignore[misc]
        return with_state(qs, self.get_embedding_field().name, name=STATE_ANNOTATION)

    # -- changelist: state column, filter, search by meaning ------------------------------

    @admin.display(description=_("embedding"), ordering=STATE_ANNOTATION)
    def embedding_state(self, obj: models.Model) -> str:
        return getattr(obj, STATE_ANNOTATION, "")

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        return [*super().get_list_display(request), "embedding_state"]  # type: ignore[misc]

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        return [*super().get_list_filter(request), EmbeddingStateFilter]  # type: ignore[misc]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # "semantic" is our toggle, not a field lookup: keep it away from ChangeList.
        request.semantic_search = request.GET.get("semantic") == "1"  # type: ignore[attr-defined]
        if "semantic" in request.GET:
            request.GET = request.GET.copy()
            del request.GET["semantic"]
        context = {"semantic_search": request.semantic_search, **(extra_context or {})}  # type: ignore[attr-defined]
        return super().changelist_view(request, context)  # type: ignore[misc]

    def get_search_results(self, request: HttpRequest, queryset: models.QuerySet, search_term: str) -> Any:
        """With the "by meaning" toggle on, the 100 rows nearest to the search text."""
        if not getattr(request, "semantic_search", False):
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        field = self.get_embedding_field()
        try:
            nearest = list(
                self.semantic_queryset(request)
                .similar_to(search_term, field=field.name)
                .values_list("pk", flat=True)[:100]
            )
            vector, _ = query_vector(self.model, field, search_term)  # type: ignore[attr-defined]
        except EmptyQuery:  # nothing to embed (blank, control characters): an ordinary search
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        except SearchUnavailable as exc:
            self.message_user(request, SEARCH_UNAVAILABLE.format(reason=exc), messages.WARNING)  # type: ignore[attr-defined]
            return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        similarity = Value(1.0) - CosineDistance(field.indexed_vector(), Value(vector_literal(vector)))
        # ChangeList orders before it searches, so this ordering stands.
        ranked = queryset.filter(pk__in=nearest).annotate(semantic_similarity=similarity)
        return ranked.order_by("-semantic_similarity", "-pk"), False

    # -- actions --------------------------------------------------------------------------

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)  # type: ignore[misc]
        for name in ("find_similar", "find_duplicates", "reembed"):
            func = getattr(type(self), name)
            if all(getattr(self, f"has_{p}_permission")(request) for p in func.allowed_permissions):
                actions[name] = (func, name, func.short_description)
        return actions

    @admin.action(description=_("Find similar"), permissions=["semantic_view"])
    def find_similar(self, request: HttpRequest, queryset: models.QuerySet) -> TemplateResponse:
        field = self.get_embedding_field()
        visible = self.semantic_queryset(request)
        results = []
        for obj in queryset.order_by("pk")[: self.similar_rows_shown]:
            if getattr(obj, field.attname) is None:
                results.append((obj, None))
                continue
            try:
                results.append((obj, list(visible.similar_to(obj, field=field.name)[: self.similar_count])))
            except (EmptyQuery, SearchUnavailable) as exc:
                self.message_user(request, SEARCH_UNAVAILABLE.format(reason=exc), messages.WARNING)  # type: ignore[attr-defined]
                results.append((obj, None))
        context = {"results": results, "selected_count": queryset.count()}
        return self.render_semantic(request, self.similar_template, _("Similar items"), context)

    @admin.action(description=_("Find duplicates among selected"), permissions=["semantic_view"])
    def find_duplicates(self, request: HttpRequest, queryset: models.QuerySet) -> TemplateResponse:
        visible = self.semantic_queryset(request).filter(pk__in=queryset.values("pk"))
        return self.duplicate_page(request, visible, selected=True)

    @admin.action(description=_("Re-embed"), permissions=["semantic_change"])
    def reembed(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        field = self.get_embedding_field()
        pks = list(queryset.values_list("pk", flat=True))
        # The same steps as `semantic_embed --all`, on these rows: pending, waiting since now, failures dropped.
        mark_pending(self.model._base_manager.filter(pk__in=pks), field)  # type: ignore[attr-defined]
        forget_failures(self.model, field, pks)  # type: ignore[arg-type]
        enqueue(self.model, field.name, pks)  # type: ignore[attr-defined]
        self.message_user(  # type: ignore[attr-defined]
            request,
            ngettext("Queued %d row for embedding.", "Queued %d rows for embedding.", len(pks)) % len(pks),
            messages.SUCCESS,
        )

    # -- pages ----------------------------------------------------------------------------

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

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None) -> Any:
        context = dict(extra_context or {})
        obj = self.get_object(request, object_id) if object_id else None  # type: ignore[attr-defined]
        if obj is not None and self.has_semantic_view_permission(request):
            field = self.get_embedding_field()
            context["semantic_similar"] = None
            if getattr(obj, field.attname) is not None:
                try:
                    context["semantic_similar"] = list(
                        self.semantic_queryset(request).similar_to(obj, field=field.name)[: self.similar_count]
                    )
                except (EmptyQuery, SearchUnavailable) as exc:
                    self.message_user(request, SEARCH_UNAVAILABLE.format(reason=exc), messages.WARNING)  # type: ignore[attr-defined]
            context["semantic_state"] = getattr(obj, STATE_ANNOTATION, "")
        return super().change_view(request, object_id, form_url, context)  # type: ignore[misc]

    def render_semantic(
        self, request: HttpRequest, template: str, title: str, context: dict[str, Any]
    ) -> TemplateResponse:
        base = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "opts": self.model._meta,  # type: ignore[attr-defined]
            "title": title,
            "changelist_url": self.semantic_url("changelist"),
            "duplicates_url": self.semantic_url("duplicates"),
            "dismiss_url": self.semantic_url("dismiss_duplicate"),
        }
        return TemplateResponse(request, template, {**base, **context})

    def semantic_url(self, view: str) -> str:
        """The URL of one of this model's admin views on this admin site, whatever the site is named.

        (The templates' ``{% url 'admin:...' %}`` need no help: Django resolves the ``admin``
        namespace to the site that served the request.)
        """
        opts = self.model._meta  # type: ignore[attr-defined]
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_{view}",
            current_app=self.admin_site.name,  # type: ignore[attr-defined]
        )


admin.site.register(EmbeddingFailure, EmbeddingFailureAdmin)


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


@admin.register(EmbeddingBatchJob)
class EmbeddingBatchJobAdmin(admin.ModelAdmin):
    list_display = ["name", "model_label", "field_name", "rows", "state", "embedded", "failed", "submitted_at"]
    list_filter = ["state", "model_label"]
    exclude = ["items"]
    readonly_fields = [f.name for f in EmbeddingBatchJob._meta.fields if f.name != "items"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
