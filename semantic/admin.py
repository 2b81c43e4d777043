"""Django admin: "Find similar", the changelist's state column and filter, and re-embedding
(the search box by meaning is in :mod:`semantic.admin_search`, the changelist's toggle and
ranking in :mod:`semantic.admin_changelist`, duplicate review in
:mod:`semantic.admin_duplicates` and :mod:`semantic.admin_compare`, the embedding status
page in :mod:`semantic.admin_status`).

Add :class:`SemanticAdminMixin` to the ModelAdmin of any model with an EmbeddingField::

    @admin.register(Question)
    class QuestionAdmin(SemanticAdminMixin, admin.ModelAdmin):
        list_display = ["title"]

Every page and action shows only rows ``get_queryset()`` admits, and needs the view
permission (change, for re-embedding and marking pairs "not a duplicate").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import SEARCH_VAR
from django.core import checks
from django.db import models
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, ngettext_lazy

from semantic.admin_changelist import (
    SEMANTIC_VAR,
    SIMILARITY_COLUMN,
    STATE_ANNOTATION,
    STATE_LABELS,
    EmbeddingStateFilter,
    SemanticChangeList,
    semantic_changelist,
)
from semantic.admin_duplicates import DuplicateReviewMixin
from semantic.admin_labels import LabelSuggestionMixin
from semantic.admin_search import MeaningSearchMixin
from semantic.admin_status import EmbeddingFailureAdmin, StatusPageMixin
from semantic.admin_topics import TopicsMixin
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingBatchJob, EmbeddingFailure
from semantic.query import SemanticQuerySet
from semantic.query_vectors import current_vector
from semantic.registry import embedding_fields
from semantic.rows import forget_deleted, forget_failures, mark_pending
from semantic.status import with_state
from semantic.switch import primary_fields, serving_field
from semantic.tasks import enqueue
from semantic.vectors import EmptyQuery, SearchUnavailable

if TYPE_CHECKING:  # django-stubs' type of a template: a name, a list of names, or a Template
    from django.template.response import _TemplateForResponseT

#: "Find similar" shows no neighbours for rows whose text it had to embed when the API could not;
#: the reason (SearchUnavailable's message) says whether to wait or which setting to fix.
FIND_SIMILAR_UNAVAILABLE = ngettext_lazy(
    "Similar items could not be found for %(count)d selected row: its stored embedding is out of date, "
    "and its text could not be embedded now. %(reason)s",
    "Similar items could not be found for %(count)d selected rows: their stored embeddings are out of date, "
    "and their text could not be embedded now. %(reason)s",
    "count",
)
#: "Find similar" on a row whose stored vector is out of date and whose text is now empty.
FIND_SIMILAR_NO_TEXT = _("Similar items could not be found: {reason}")
#: "Re-embed" leaves out the selected rows the ModelAdmin does not let the user change
#: (marked for translation; the count is passed when the message is shown).
REEMBED_LEFT_OUT = ngettext_lazy(
    "%(count)d selected row is left out: you may not change it.",
    "%(count)d selected rows are left out: you may not change them.",
    "count",
)
#: semantic.E010: the ModelAdmin does not say which EmbeddingField its pages use.
SEVERAL_FIELDS = "{admin}: {label} has several EmbeddingFields ({fields}); the admin's pages need one."
UNKNOWN_FIELD = "{admin}.semantic_field is {name!r}, which is no EmbeddingField of {label}."
FIELD_HINT = 'Set semantic_field = "{name}" (or another EmbeddingField\'s name) on {admin}.'
NO_FIELD = (
    "{admin}: {label} has no EmbeddingField. SemanticAdminMixin goes on the ModelAdmin of the model "
    "that has the EmbeddingField; an inline's parent needs none."
)
NO_FIELD_HINT = "Remove SemanticAdminMixin from {admin}; add it to the ModelAdmin of the model with the EmbeddingField."


class SemanticAdminMixin(MeaningSearchMixin, LabelSuggestionMixin, TopicsMixin, DuplicateReviewMixin, StatusPageMixin):
    """Semantic actions, pages, list column and filter for a ModelAdmin (search by meaning:
    :mod:`semantic.admin_search`; duplicate review: :mod:`semantic.admin_duplicates`;
    suggested labels: :mod:`semantic.admin_labels`; the Topics page: :mod:`semantic.admin_topics`;
    the status page: :mod:`semantic.admin_status`)."""

    #: Which EmbeddingField to use; None when the model has just one.
    semantic_field: str | None = None
    #: How many neighbours "Find similar" and the change form show.
    similar_count = 5
    #: How many selected rows "Find similar" answers for (one search each); the page says when it left some out.
    similar_rows_shown = 20
    similar_template = "semantic/admin/similar.html"
    # Typed as django-stubs types ModelAdmin's, or mypy finds the two bases incompatible.
    change_form_template: ClassVar[_TemplateForResponseT | None] = "semantic/admin/change_form.html"
    change_list_template: ClassVar[_TemplateForResponseT | None] = "semantic/admin/change_list.html"

    # -- permissions (override to taste) ------------------------------------------------

    def has_semantic_view_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)  # type: ignore[attr-defined]

    def has_semantic_change_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request)  # type: ignore[attr-defined]

    # -- the field and the rows ------------------------------------------------------------

    def get_embedding_field(self) -> EmbeddingField:
        return serving_field(self.model, self.semantic_field)  # type: ignore[attr-defined]

    def has_embedding_field(self) -> bool:
        """False on the ModelAdmin of a model without one (semantic.E010): its pages are then
        Django's own, rather than a server error where checks did not run."""
        return bool(embedding_fields(self.model))  # type: ignore[attr-defined]

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """Django's admin checks, and that :attr:`semantic_field` names the field to use:
        every page of the admin reads it, so a wrong one would answer 500 everywhere."""
        errors = super().check(**kwargs)  # type: ignore[misc]
        model, admin_name = self.model, type(self).__name__  # type: ignore[attr-defined]
        fields = embedding_fields(model)
        names = [f.name for f in fields]
        if not fields:
            message = NO_FIELD.format(admin=admin_name, label=model._meta.label)
            hint = NO_FIELD_HINT.format(admin=admin_name)
            return [*errors, checks.Error(message, hint=hint, obj=type(self), id="semantic.E010")]
        if self.semantic_field is None and len(primary_fields(model)) > 1:
            listed = ", ".join(f.name for f in primary_fields(model))
            message = SEVERAL_FIELDS.format(admin=admin_name, label=model._meta.label, fields=listed)
        elif self.semantic_field is not None and self.semantic_field not in [*names, *(f.replaces for f in fields)]:
            message = UNKNOWN_FIELD.format(admin=admin_name, name=self.semantic_field, label=model._meta.label)
        else:
            return errors
        hint = FIELD_HINT.format(admin=admin_name, name=names[0] if names else "embedding")
        return [*errors, checks.Error(message, hint=hint, obj=type(self), id="semantic.E010")]

    def semantic_queryset(self, request: HttpRequest, visible: models.QuerySet | None = None) -> SemanticQuerySet:
        """The rows this user may see (``get_queryset()``, or ``visible``), as a SemanticQuerySet."""
        if visible is None:
            visible = self.get_queryset(request)  # type: ignore[attr-defined]
        rows = SemanticQuerySet(self.model, using=visible.db)  # type: ignore[attr-defined]
        return rows.filter(pk__in=visible.values("pk")) if visible.query.where else rows

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        qs = super().get_queryset(request)  # type: ignore[misc]
        if not self.has_embedding_field():
            return qs
        return with_state(qs, self.get_embedding_field().name, name=STATE_ANNOTATION)

    def delete_model(self, request: HttpRequest, obj: models.Model) -> None:
        pk = obj.pk
        super().delete_model(request, obj)  # type: ignore[misc]
        self.forget_deleted(obj._state.db, [pk])

    def delete_queryset(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        pks = list(queryset.values_list("pk", flat=True))
        super().delete_queryset(request, queryset)  # type: ignore[misc]
        self.forget_deleted(queryset.db, pks)

    def forget_deleted(self, using: str | None, pks: list[Any]) -> None:
        """Drop the failure records of rows deleted here, so the failures list and "Retry failed
        rows" never show them (a refused text is often junk that is then deleted). Deletes
        elsewhere leave theirs to the sweep: a post_delete receiver would cost every delete."""
        for field in embedding_fields(self.model):  # type: ignore[attr-defined]
            forget_deleted(field, pks, using)

    # -- changelist: state column, filter, the similarity column of a search by meaning ---

    @admin.display(description=_("embedding"), ordering=STATE_ANNOTATION)
    def embedding_state(self, obj: models.Model) -> str:
        state = getattr(obj, STATE_ANNOTATION, "")
        return STATE_LABELS.get(state, state)

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        columns = [*super().get_list_display(request), "embedding_state"]  # type: ignore[misc]
        if self.searches_by_meaning(request) and request.GET.get(SEARCH_VAR, "").strip():
            columns.insert(1, SIMILARITY_COLUMN)  # after the column that links to the row
        return columns

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        return [*super().get_list_filter(request), EmbeddingStateFilter]  # type: ignore[misc]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[SemanticChangeList]:
        return semantic_changelist(super().get_changelist(request, **kwargs))  # type: ignore[misc]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        allowed = self.has_semantic_view_permission(request)
        context = {
            "semantic_allowed": allowed,
            "semantic_search": allowed and request.GET.get(SEMANTIC_VAR) == "1",
            "semantic_status_url": self.embedding_status_url(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)  # type: ignore[misc]

    # -- actions --------------------------------------------------------------------------

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        """``action_location``: see LabelSuggestionMixin.get_actions()."""
        located = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **located)  # type: ignore[misc]
        if self.actions is None or IS_POPUP_VAR in request.GET or not self.has_embedding_field():  # type: ignore[attr-defined]
            return actions  # no action in Django (turned off, a popup for picking a row), or no field (E010)
        for name in ("find_similar", "find_duplicates", "reembed"):
            func = getattr(type(self), name)
            if all(getattr(self, f"has_{p}_permission")(request) for p in func.allowed_permissions):
                if action := self.get_action(name, **located):  # type: ignore[attr-defined]
                    actions[name] = action
        return actions

    @admin.action(description=_("Find similar"), permissions=["semantic_view"])
    def find_similar(self, request: HttpRequest, queryset: models.QuerySet) -> TemplateResponse:
        """Each selected row's nearest neighbours.

        A row whose stored vector is out of date is searched with its text, embedded now.
        After the first embedding that fails, no other is tried (the API that failed, or
        timed out, would most likely do so again, and each try holds the request up to
        ``SEARCH_TIMEOUT``): one warning, and the rows that needed the API say so.
        """
        field = self.get_embedding_field()
        visible = self.semantic_queryset(request)
        results, unavailable = [], []
        failure: SearchUnavailable | None = None
        for obj in queryset.order_by("pk")[: self.similar_rows_shown]:
            if getattr(obj, field.attname) is None:
                results.append((obj, None))
                continue
            if failure and current_vector(self.model, field, obj) is None:  # type: ignore[attr-defined]
                unavailable.append(obj.pk)
                results.append((obj, None))
                continue
            try:
                results.append((obj, list(visible.similar_to(obj, field=field.name)[: self.similar_count])))
            except EmptyQuery as exc:
                self.message_user(request, FIND_SIMILAR_NO_TEXT.format(reason=exc), messages.WARNING)  # type: ignore[attr-defined]
                results.append((obj, None))
            except SearchUnavailable as exc:
                failure = exc
                unavailable.append(obj.pk)
                results.append((obj, None))
        if failure:
            warning = FIND_SIMILAR_UNAVAILABLE % {"count": len(unavailable), "reason": failure}
            self.message_user(request, warning, messages.WARNING)  # type: ignore[attr-defined]
        context = {
            "results": results,
            "unavailable": unavailable,
            "selected_count": queryset.count(),
            "back_url": request.get_full_path(),  # the list the action was posted from, with its filters and page
        }
        return self.render_semantic(request, self.similar_template, _("Similar items"), context)

    @admin.action(description=_("Re-embed"), permissions=["semantic_change"])
    def reembed(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        """Queue the selected rows the ModelAdmin lets this user change (``has_change_permission(request, obj)``,
        as a row's change form asks): a row queued again has its bookkeeping columns written."""
        field = self.get_embedding_field()
        selected = list(queryset.values_list("pk", flat=True))
        pks = list(self.changeable_rows(request, queryset, selected))
        if pks:
            # The same steps as `semantic_embed --all`, on these rows: pending, waiting since now, failures dropped.
            mark_pending(self.model._base_manager.filter(pk__in=pks), field)  # type: ignore[attr-defined]
            forget_failures(self.model, field, pks)  # type: ignore[arg-type]
            enqueue(self.model, field.name, pks)  # type: ignore[attr-defined]
        self.message_user(  # type: ignore[attr-defined]
            request,
            ngettext("Queued %d row for embedding.", "Queued %d rows for embedding.", len(pks)) % len(pks),
            messages.SUCCESS,
        )
        if left_out := len(selected) - len(pks):
            self.message_user(request, REEMBED_LEFT_OUT % {"count": left_out}, messages.WARNING)  # type: ignore[attr-defined]

    # -- pages ----------------------------------------------------------------------------

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None) -> Any:
        context = dict(extra_context or {})
        # The URL carries the key quoted, as Django's admin quotes it ("a_b" is "a_5Fb"): unquoted as Django does.
        obj = self.get_object(request, unquote(object_id)) if object_id else None  # type: ignore[attr-defined]
        if obj is not None and self.has_embedding_field() and self.has_semantic_view_permission(request):
            field = self.get_embedding_field()
            # Only a stored vector that is current: a row whose text waits for the worker would
            # otherwise be embedded here, and every Save of it would wait on the API.
            vector = current_vector(self.model, field, obj)  # type: ignore[attr-defined]
            context["semantic_similar"] = None
            if vector is not None:
                near = self.semantic_queryset(request).similar_to(vector, field=field.name).exclude(pk=obj.pk)
                context["semantic_similar"] = list(near[: self.similar_count])
            context["semantic_state"] = getattr(obj, STATE_ANNOTATION, "")
            context["empty_value_display"] = self.get_empty_value_display()  # type: ignore[attr-defined]
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
            # A row whose str() is empty is linked by this, as Django's changelist links it.
            "empty_value_display": self.get_empty_value_display(),  # type: ignore[attr-defined]
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


@admin.register(EmbeddingBatchJob)
class EmbeddingBatchJobAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "model_label",
        "field_name",
        "passages",
        "rows",
        "state",
        "embedded",
        "failed",
        "submitted_at",
    ]
    list_filter = ["state", "model_label"]
    exclude = ["items"]
    readonly_fields = [f.name for f in EmbeddingBatchJob._meta.fields if f.name != "items"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
