"""The embedding status page, and the EmbeddingFailure admin that leads to it.

The page reports on other models' rows, so the EmbeddingFailure permissions that open it
are not enough: a model counts only when the user may view it through its ModelAdmin on
this admin site, its ``has_semantic_view_permission()`` too (superusers see the models
without one as well), and then only the rows that ModelAdmin's ``get_queryset()`` admits
(:mod:`semantic.admin_access`).
"Retry failed rows" re-queues only rows the user sees and may change (the ModelAdmin's
``has_change_permission(request, obj)`` of each), and drops the records of rows deleted
since (as the sweep does). Failure rows that name a model or field that is gone, or a key
the model cannot read, are skipped and reported: they must not turn the button into a
server error.
"""

from __future__ import annotations

from typing import Any, Literal

from django.apps import apps
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models, router
from django.db.models import CharField, Q
from django.db.models.functions import Cast
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from semantic import tenancy
from semantic.admin_access import site_rows
from semantic.admin_changelist import STATE_LABELS, EmbeddingStateFilter, changeable_objects
from semantic.fields import EmbeddingField
from semantic.models import EmbeddingFailure
from semantic.registry import embedding_fields
from semantic.rows import FAILURE_SUFFIX, readable_keys, sweep_orphan_failures
from semantic.status import STATES, field_status
from semantic.tasks import enqueue, iter_fields

#: How many of the newest failures the status page lists.
LAST_ERRORS = 20


class EmbeddingFailureAdmin(admin.ModelAdmin):
    """The failure records, and the status page. Both show only the records of rows the user
    may see (below), and of models no longer installed: those show no one's rows, and this
    list is where they can be deleted."""

    list_display = ["model_label", "field_name", "object_pk", "attempts", "permanent", "short_error", "last_failed_at"]
    list_filter = ["model_label", "field_name", "permanent"]
    readonly_fields = [f.name for f in EmbeddingFailure._meta.fields]
    change_list_template = "semantic/admin/failure_change_list.html"

    @admin.display(description=_("error"))
    def short_error(self, obj: EmbeddingFailure) -> str:
        return obj.error[:120]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        records = super().get_queryset(request)
        visible = failure_conditions(self.visible_rows(request)).get(records.db, Q(pk__in=[]))
        installed = {model._meta.label for model, _ in iter_fields()}
        return records.filter(visible | ~Q(model_label__in=installed))

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """The list shows one database's records; those kept on another (a model routed there) are counted."""
        here = router.db_for_read(self.model)
        elsewhere = [
            (using, EmbeddingFailure.objects.using(using).filter(condition).count())
            for using, condition in failure_conditions(self.visible_rows(request)).items()
            if using != here
        ]
        context = {"semantic_failures_elsewhere": [(using, count) for using, count in elsewhere if count]}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    def visible_rows(self, request: HttpRequest) -> dict[type[models.Model], models.QuerySet | None]:
        """Each model with an EmbeddingField: the rows this user may view on this admin site, or None."""
        return {model: self.model_rows(request, model, "view") for model in {m for m, _ in iter_fields()}}

    def get_urls(self) -> list[Any]:
        return [
            path("status/", self.admin_site.admin_view(self.status_view), name="semantic_status"),
            *super().get_urls(),
        ]

    def status_view(self, request: HttpRequest) -> Any:
        """Counts per model and field, the last errors, and a button to retry failed rows."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            dropped = self.drop_records_of_deleted_rows(request)
            retried, skipped = self.retry_failed(request)
            self.message_user(
                request, ngettext("Queued %d failed row again.", "Queued %d failed rows again.", retried) % retried
            )
            if dropped:
                message = ngettext(
                    "Removed %d failure record of a row deleted since.",
                    "Removed %d failure records of rows deleted since.",
                    dropped,
                )
                self.message_user(request, message % dropped)
            if skipped:
                message = ngettext(
                    "Skipped %d failed row: its model or field is gone, its key is malformed, "
                    "or you may not change it.",
                    "Skipped %d failed rows: their model or field is gone, their key is malformed, "
                    "or you may not change them.",
                    skipped,
                )
                self.message_user(request, message % skipped, messages.WARNING)
            # The page's own URL: it is served here, or by a SemanticAdminMixin on a site without this admin.
            return HttpResponseRedirect(request.path)
        visible = self.visible_rows(request)
        report = []
        for model, field in iter_fields():
            if visible[model] is not None:
                row = field_status(model, field, visible[model])
                row["counts"] = counts_with_links(row, self.changelist_url(request, model, field))
                report.append(row)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Embedding status"),
            "opts": self.model._meta,
            "report": report,
            "any_passages": any(row["passages"] is not None for row in report),
            "count_headings": count_headings(),
            "errors": visible_failures(visible, LAST_ERRORS),
            "can_retry": self.has_change_permission(request),
        }
        return TemplateResponse(request, "semantic/admin/status.html", context)

    def changelist_url(self, request: HttpRequest, model: type[models.Model], field: EmbeddingField) -> str | None:
        """The changelist of ``model`` on this admin site, when its embedding filter reports on ``field``.

        Its rows are the ones counted here (the same ``get_queryset()``), so a count and
        the changelist it links to agree.
        """
        model_admin = self.admin_site._registry.get(model)
        filters = model_admin.get_list_filter(request) if model_admin is not None else []
        if not any(isinstance(f, type) and issubclass(f, EmbeddingStateFilter) for f in filters):
            return None
        try:
            if model_admin.get_embedding_field().name != field.name:
                return None
        except (AttributeError, ValueError):  # not a SemanticAdminMixin, or no single field to report on
            return None
        opts = model._meta
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist", current_app=self.admin_site.name)

    def model_rows(
        self, request: HttpRequest, model: type[models.Model], action: Literal["view", "change"]
    ) -> models.QuerySet | None:
        """The rows of ``model`` this user may ``"view"`` or ``"change"`` on this admin site; None for none
        (:func:`semantic.admin_access.site_rows`: the list of "not a duplicate" pairs asks it too)."""
        return site_rows(self.admin_site, request, model, action)

    def drop_records_of_deleted_rows(self, request: HttpRequest) -> int:
        """Drop the failure records of rows deleted behind the ORM's back (as the sweep does), of
        the models this user may change; returns how many. Retried, they would be skipped for ever."""
        return sum(
            sweep_orphan_failures(field, router.db_for_write(model))
            for model, field in iter_fields()
            if self.model_rows(request, model, "change") is not None
        )

    def retry_failed(self, request: HttpRequest) -> tuple[int, int]:
        """Queue the failed rows this user may change and sees; returns (queued, skipped).

        Skipped counts only what this user may know of: the rows they see but may not change,
        records of a model or field since removed, and malformed keys; never the records of
        rows ``get_queryset()`` hides, whose number would tell how many of them fail."""
        queued = skipped = 0
        for using, (label, field_name), keys in failures_by_field():
            # A row whose passages failed is queued under its field: the worker retries its passages.
            model = embedding_model(label, field_name.removesuffix(FAILURE_SUFFIX))
            if model is not None and router.db_for_read(model) != using:
                continue  # rows saved to another database than the model is read from: not on this page
            if model is not None and not tenancy.has_table(model, using):
                model = None  # a tenant model's records left in the public schema: its rows are not here
            if model is None:
                skipped += len(keys)
                continue
            seen = self.model_rows(request, model, "view")
            if seen is None:
                continue  # a model this user does not see here: its records are not theirs to count
            pks = readable_keys(model, keys)  # a malformed key is no one's row: counting it tells nothing
            shown = list(seen.filter(pk__in=list(pks)).values_list("pk", flat=True))
            rows = self.model_rows(request, model, "change")
            allowed = self.changeable_keys(request, model, rows, shown) if rows is not None else []
            skipped += len(keys) - len(pks) + len(shown) - len(allowed)
            if not allowed:
                continue
            # Read where the rows are read from; changed where the worker wrote them (a replica refuses writes).
            EmbeddingFailure.objects.using(router.db_for_write(model)).filter(
                model_label=label, field_name=field_name, object_pk__in=[pks[pk] for pk in allowed]
            ).update(retry_at=None, permanent=False)
            enqueue(model, field_name.removesuffix(FAILURE_SUFFIX), allowed)
            queued += len(allowed)
        return queued, skipped

    def changeable_keys(
        self, request: HttpRequest, model: type[models.Model], rows: models.QuerySet, pks: list[Any]
    ) -> list[Any]:
        """The keys among ``pks`` of ``rows`` this user may change: the model's ModelAdmin on this
        site decides for each row (``has_change_permission(request, obj)``, as the row's change form asks)."""
        model_admin = self.admin_site._registry.get(model)
        if model_admin is None:  # a superuser's, on a site without this model
            return list(rows.filter(pk__in=pks).values_list("pk", flat=True))
        return list(changeable_objects(model_admin, request, rows, pks))


class StatusPageMixin:
    """The embedding status page among a SemanticAdminMixin's own URLs, so that an admin
    site without an :class:`EmbeddingFailureAdmin` (a project's own AdminSite) has it too."""

    def get_urls(self) -> list[Any]:
        opts = self.model._meta  # type: ignore[attr-defined]
        view = self.admin_site.admin_view(self.embedding_status_view)  # type: ignore[attr-defined]
        return [
            path("embedding-status/", view, name=f"{opts.app_label}_{opts.model_name}_semantic_status"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def embedding_status_view(self, request: HttpRequest) -> Any:
        """The page, on a site that registers no EmbeddingFailure admin; 404 on one that does:
        there the page is that admin's, whose permissions (a subclass's stricter ones) must decide."""
        site = self.admin_site  # type: ignore[attr-defined]
        if EmbeddingFailure in site._registry:
            raise Http404(_("This admin site shows the embedding status beside its embedding failures."))
        return EmbeddingFailureAdmin(EmbeddingFailure, site).status_view(request)

    def embedding_status_url(self, request: HttpRequest) -> str | None:
        """This site's embedding status page; None when this user may not open it, or the site has none.

        A site with an EmbeddingFailureAdmin (``admin.site``: the app registers one there)
        serves the page beside the failures, under that admin's permissions; a site that
        registers another admin for EmbeddingFailure has no page; any other site serves it
        from this ModelAdmin's URLs.
        """
        site = self.admin_site  # type: ignore[attr-defined]
        failure_admin = site._registry.get(EmbeddingFailure)
        name = "semantic_status"
        if failure_admin is None:
            failure_admin = EmbeddingFailureAdmin(EmbeddingFailure, site)
            opts = self.model._meta  # type: ignore[attr-defined]
            name = f"{opts.app_label}_{opts.model_name}_semantic_status"
        elif not isinstance(failure_admin, EmbeddingFailureAdmin):
            return None
        if not failure_admin.has_view_permission(request):
            return None
        return reverse(f"admin:{name}", current_app=site.name)


def counts_with_links(row: dict[str, Any], changelist_url: str | None) -> list[tuple[int, str | None, str]]:
    """The total and each state's count of a status row, each with the changelist URL showing
    those rows and its column's heading (a link's text names it: "1 pending", not a bare "1")."""
    if changelist_url is None:
        return [(row[key], None, heading) for key, heading in zip(("total", *STATES), count_headings())]
    parameter = EmbeddingStateFilter.parameter_name
    urls = [changelist_url] + [f"{changelist_url}?{urlencode({parameter: state})}" for state in STATES]
    return [(row[key], url, heading) for key, url, heading in zip(("total", *STATES), urls, count_headings())]


def count_headings() -> list[str]:
    return [_("Total"), *(STATE_LABELS[state] for state in STATES)]


def failure_conditions(visible: dict[type[models.Model], models.QuerySet | None]) -> dict[str, Q]:
    """By database, which EmbeddingFailure records are of the rows in ``visible`` (a model's visible rows, or None).

    Each model's are on the database its rows are read from, where they are kept
    (``semantic.E008``): one condition per database, never one joining two databases' tables.
    """
    conditions: dict[str, Q] = {}
    for model, rows in visible.items():
        if rows is not None:
            keys = rows.annotate(_semantic_key=Cast("pk", CharField())).values("_semantic_key")
            condition = Q(model_label=model._meta.label, object_pk__in=keys)
            conditions[rows.db] = conditions[rows.db] | condition if rows.db in conditions else condition
    return conditions


def visible_failures(visible: dict[type[models.Model], models.QuerySet | None], limit: int) -> list[EmbeddingFailure]:
    """The ``limit`` newest EmbeddingFailure rows of the rows in ``visible`` (a model's visible rows, or None)."""
    found: list[EmbeddingFailure] = []
    for using, condition in failure_conditions(visible).items():
        found += EmbeddingFailure.objects.using(using).filter(condition).order_by("-last_failed_at")[:limit]
    return sorted(found, key=lambda failure: failure.last_failed_at, reverse=True)[:limit]


def failures_by_field() -> list[tuple[str, tuple[str, str], list[str]]]:
    """Every failure record's key, grouped by database and (model label, field name).

    Read on every database a model with an EmbeddingField is read from, and on
    EmbeddingFailure's own (records of models since removed).
    """
    databases = [router.db_for_read(model) for model, _ in iter_fields()]
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for using in dict.fromkeys([router.db_for_read(EmbeddingFailure), *databases]):
        records = EmbeddingFailure.objects.using(using).values_list("model_label", "field_name", "object_pk")
        for label, field_name, pk in records:
            grouped.setdefault((using, label, field_name), []).append(pk)
    return [(using, (label, field_name), keys) for (using, label, field_name), keys in grouped.items()]


def embedding_model(label: str, field_name: str) -> type[models.Model] | None:
    """The installed model ``label`` when it still has an EmbeddingField ``field_name``."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return None
    fields: list[EmbeddingField] = embedding_fields(model)
    return model if any(f.name == field_name for f in fields) else None
