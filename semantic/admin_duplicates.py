"""Duplicate review in the admin: the "Find duplicates among selected" action, the review
page, "Not a duplicate", and the list of pairs marked so.

:class:`DuplicateReviewMixin` is one part of :class:`semantic.admin.SemanticAdminMixin`
(which users add to their ModelAdmin); it leans on that class for the rows a user may
see (``semantic_queryset``), the field, the permission hooks and page rendering.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.cache import cache
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.core.paginator import Paginator
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import formats, timezone
from django.utils.http import urlencode
from django.utils.text import Truncator, capfirst
from django.utils.translation import gettext_lazy as _

from semantic import tenancy
from semantic.admin_compare import CHANGELIST_FILTERS, SELECTION_VAR, CompareMixin, review_state
from semantic.admin_dismissed import DismissedPairAdmin
from semantic.admin_selection import keep_selection, kept_selection
from semantic.duplicates import DuplicateSearchCanceled
from semantic.field_text import read_part
from semantic.fields import EmbeddingField
from semantic.models import DismissedPair
from semantic.query import DEFAULT_DUPLICATE_THRESHOLD, SemanticQuerySet
from semantic.review import ReviewGroup, review_groups, similarities_to, with_objects
from semantic.search_arguments import check_threshold

__all__ = ["DismissedPairAdmin", "DuplicateReviewMixin"]


@dataclass
class ReviewRow:
    """One row of a group's table on the review page."""

    obj: models.Model
    #: Similarity to the group's first row; None for that row itself.
    similarity: float | None
    excerpt: str
    date: Any


class DuplicateReviewMixin(CompareMixin):
    """Duplicate review pages and action for a ModelAdmin (through SemanticAdminMixin)."""

    #: Starting threshold of duplicate review (adjustable on the page).
    duplicate_threshold = DEFAULT_DUPLICATE_THRESHOLD
    #: Groups per page of duplicate review (the selected rows' review pages the same way).
    duplicate_groups_per_page = 20
    #: Pairs shown of each group, most similar first. At a low threshold one group can hold most
    #: of the table; the page says how many pairs it left out.
    duplicate_pairs_shown = 10
    #: Rows "Find duplicates among selected" takes; past this many, "Review duplicates" covers the table.
    duplicate_selection_max = 500
    #: The date column of duplicate review; None: found from the model (see get_duplicate_date_field), "": none.
    duplicate_date_field: str | None = None
    #: Characters of each row's text shown in duplicate review.
    duplicate_excerpt_chars = 120
    #: Seconds the review keeps the pairs of a threshold and a list's filters in Django's cache
    #: (``default``), so its pages and the return after "Not a duplicate" do not search the whole
    #: table again (5.6 s per click at 100,000 rows); 0 searches on every page.
    duplicate_cache_seconds = 5 * 60
    duplicates_template = "semantic/admin/duplicates.html"

    PAIRS_KEPT = _(
        "Pairs as found at %(time)s, kept for %(minutes)s minutes so paging and reviewing do not search "
        "the whole table again; rows added or changed since then are searched when they expire."
    )
    TOO_MANY_SELECTED = _(
        "%(count)d rows selected; “Find duplicates among selected” takes at most %(max)d. "
        "Select fewer, or use “Review duplicates” for the whole table."
    )
    SEARCH_CANCELED = _(
        "PostgreSQL cancelled the search for duplicates: it took longer than the database allows one statement "
        "(statement_timeout %(timeout)s, often set for the role the site connects as). The search takes longer "
        "the more rows it covers: select up to %(max)d rows in the list (its filters and search help) and choose "
        "“Find duplicates among selected”, or raise statement_timeout for that role "
        "(ALTER ROLE … SET statement_timeout = …)."
    )
    NONE_SELECTED_LEFT = _(
        "None of the selected rows is left: they were deleted since the list was shown, or you may not see "
        "them. Select rows in the list again."
    )
    SELECTION_GONE = _(
        "The rows selected for that review are no longer kept. Select them in the list again and "
        "choose “Find duplicates among selected”."
    )

    @admin.action(description=_("Find duplicates among selected"), permissions=["semantic_view"])
    def find_duplicates(self, request: HttpRequest, queryset: models.QuerySet) -> HttpResponseRedirect | None:
        """Review the selected rows on the duplicate page, by a link that names their selection.

        A page reached by GET keeps the selection through the threshold form, its pages,
        "Not a duplicate" and the compare view, and survives a reload (as Django's docs
        advise for actions with an intermediate page). The link carries a token, not the
        keys: 450 six-digit keys passed gunicorn's default request-line limit (4,094 bytes).
        """
        visible = self.semantic_queryset(request).filter(pk__in=queryset.values("pk"))  # type: ignore[attr-defined]
        pks = list(visible.order_by("pk").values_list("pk", flat=True))
        if not pks:  # an empty selection would otherwise read as none, and review the whole table
            self.message_user(request, self.NONE_SELECTED_LEFT, messages.WARNING)  # type: ignore[attr-defined]
            return None
        if len(pks) > self.duplicate_selection_max:
            message = self.TOO_MANY_SELECTED % {"count": len(pks), "max": self.duplicate_selection_max}
            self.message_user(request, message, messages.WARNING)  # type: ignore[attr-defined]
            return None
        state = [(SELECTION_VAR, keep_selection(request, self.model, pks))]  # type: ignore[attr-defined]
        if request.META.get("QUERY_STRING"):
            state.append((CHANGELIST_FILTERS, request.META["QUERY_STRING"]))
        return HttpResponseRedirect(f"{self.semantic_url('duplicates')}?{urlencode(state)}")  # type: ignore[attr-defined]

    def get_urls(self) -> list[Any]:
        opts = self.model._meta  # type: ignore[attr-defined]
        wrap = self.admin_site.admin_view  # type: ignore[attr-defined]
        name = f"{opts.app_label}_{opts.model_name}"
        return [
            path("duplicates/", wrap(self.duplicates_view), name=f"{name}_duplicates"),
            path("duplicates/dismiss/", wrap(self.dismiss_view), name=f"{name}_dismiss_duplicate"),
            path("duplicates/compare/", wrap(self.compare_view), name=f"{name}_compare_duplicates"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    # -- the review page ------------------------------------------------------------------

    def duplicates_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_semantic_view_permission(request):
            raise PermissionDenied
        rows = self.semantic_queryset(request)  # type: ignore[attr-defined]
        selected = request.GET.getlist("id")  # a link naming the keys, as the action's did before
        token = request.GET.get(SELECTION_VAR)
        if token:
            selected = kept_selection(request, self.model, token)  # type: ignore[attr-defined]
            if selected is None:
                self.message_user(request, self.SELECTION_GONE, messages.WARNING)  # type: ignore[attr-defined]
                return HttpResponseRedirect(self.changelist_back_url(review_state(request.GET)))
        # A selection none of whose rows is left reviews none, never the whole table.
        if token or selected:
            rows = rows.filter(pk__in=[self.duplicate_pk(pk) for pk in selected])
        return self.duplicate_page(request, rows, selected=bool(token or selected))

    def dismiss_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_semantic_change_permission(request):
            raise PermissionDenied
        a, b = self.requested_pair(request, request.POST, _("A row is not a duplicate of itself."))[1:]
        if not all(self.has_change_permission(request, obj) for obj in (a, b)):  # type: ignore[attr-defined]
            raise PermissionDenied  # as the row's change form: the ModelAdmin refuses to change it
        first, second = DismissedPair.ordered(a.pk, b.pk)
        DismissedPair.objects.get_or_create(
            model_label=self.model._meta.label,  # type: ignore[attr-defined]
            field_name=self.get_embedding_field().name,  # type: ignore[attr-defined]
            first_pk=first,
            second_pk=second,
            defaults={"dismissed_by": request.user.get_username()},
        )
        self.message_user(request, _("Marked “%(a)s” and “%(b)s” as not duplicates.") % {"a": a, "b": b})  # type: ignore[attr-defined]
        return HttpResponseRedirect(self.review_url(review_state(request.POST)))

    def duplicate_page(
        self, request: HttpRequest, rows: SemanticQuerySet, *, selected: bool = False
    ) -> TemplateResponse:
        """Groups of likely duplicates, a page of groups at a time, each cut to its most similar pairs.

        The search runs over one database connection (``workers=1``): a request must not
        open as many connections as the server has cores. Its pairs are kept (see
        :meth:`duplicate_pairs`); what changed since is applied to them here: pairs marked
        not duplicates and rows deleted or hidden since drop out.
        """
        threshold, shown_threshold, error = self.duplicate_page_threshold(request)
        field = self.get_embedding_field()  # type: ignore[attr-defined]
        page = None
        tables = []
        can_dismiss = self.has_semantic_change_permission(request)  # type: ignore[attr-defined]
        unchangeable: set[Any] = set()  # rows of the page the ModelAdmin refuses to change: no "Not a duplicate"
        unviewable: set[Any] = set()  # rows whose change form the ModelAdmin refuses: no excerpt, no "Compare"
        kept_note = search_error = None
        if error is None:
            dismissed = set(
                DismissedPair.objects.filter(
                    model_label=self.model._meta.label,  # type: ignore[attr-defined]
                    field_name=field.name,
                ).values_list("first_pk", "second_pk")
            )
            try:
                found_at, found = self.duplicate_pairs(rows, threshold, field)
            except DuplicateSearchCanceled as exc:
                found_at, found = None, []
                search_error = self.SEARCH_CANCELED % {"timeout": exc.timeout, "max": self.duplicate_selection_max}
            named = {pk for a, b, _ in found for pk in (a, b)}
            existing = set(rows.filter(pk__in=named).values_list("pk", flat=True)) if named else set()
            pairs = [
                (a, b, s)
                for a, b, s in found
                if a in existing and b in existing and DismissedPair.ordered(a, b) not in dismissed
            ]
            groups = review_groups(pairs, pairs_shown=self.duplicate_pairs_shown)
            page = Paginator(groups, self.duplicate_groups_per_page).get_page(request.GET.get("page"))
            with_objects(rows, page)
            shown = {obj.pk: obj for group in page for a, b, _ in group.pairs for obj in (a, b)}
            unviewable = {pk for pk, obj in shown.items() if not self.has_view_or_change_permission(request, obj)}  # type: ignore[attr-defined]
            tables = [(group, self.duplicate_rows(request, rows, group, unviewable)) for group in page]
            if can_dismiss:
                unchangeable = {pk for pk, obj in shown.items() if not self.has_change_permission(request, obj)}  # type: ignore[attr-defined]
            if self.duplicate_cache_seconds and found_at is not None:
                local = timezone.localtime(found_at) if timezone.is_aware(found_at) else found_at  # USE_TZ = False
                moment = local.strftime("%H:%M:%S")
                kept_note = self.PAIRS_KEPT % {"time": moment, "minutes": f"{self.duplicate_cache_seconds / 60:g}"}
        state = review_state(request.GET, threshold=shown_threshold)
        # What every form and link of the page carries on: the selection and the list's filters.
        kept = [(key, value) for key, value in state if key in ("id", SELECTION_VAR, CHANGELIST_FILTERS)]
        context = {
            "groups": [group for group, _ in tables],
            "group_tables": tables,
            "page": page,
            "threshold": shown_threshold,
            "threshold_error": error,
            "search_error": search_error,
            "kept_note": kept_note,
            "selected": selected,
            "selected_count": rows.count() if selected else None,
            "date_label": self.duplicate_date_label(),
            "can_dismiss": can_dismiss,
            "unchangeable": unchangeable,
            "unviewable": unviewable,
            "compare_url": self.semantic_url("compare_duplicates"),  # type: ignore[attr-defined]
            "review_all_url": self.review_url([("threshold", shown_threshold)]),
            "back_url": self.changelist_back_url(state),
            "kept": kept,
            "pages_query": urlencode([("threshold", shown_threshold), *kept]),
            "state_query": urlencode(state),
        }
        return self.render_semantic(request, self.duplicates_template, _("Likely duplicates"), context)  # type: ignore[attr-defined]

    def duplicate_pairs(self, rows: SemanticQuerySet, threshold: float, field: EmbeddingField) -> tuple[Any, list]:
        """When the pairs ``(a.pk, b.pk, similarity)`` of ``rows`` at ``threshold`` were found, and the pairs.

        Kept under the rows' SQL, so every filter, search, selection and ``get_queryset()``
        (one user may see fewer rows than another) has pairs of its own.
        """
        sql, params = rows.order_by().values("pk").query.sql_with_params()
        identity = repr((field.name, threshold, sql, params)).encode()
        # The SQL is the same in every tenant's schema (django-tenants): the schema is part of the key.
        scope = tenancy.scope(rows.db)
        digest = hashlib.blake2b(identity, digest_size=16).hexdigest()
        key = f"semantic:duplicates:{scope}{self.model._meta.label}:{digest}"  # type: ignore[attr-defined]
        kept = cache.get(key) if self.duplicate_cache_seconds else None
        if kept is not None:
            return kept
        found = rows.duplicate_keys(threshold, field=field.name, workers=1)  # the page loads its own rows
        kept = (timezone.now(), found)
        if self.duplicate_cache_seconds:
            cache.set(key, kept, self.duplicate_cache_seconds)
        return kept

    def duplicate_rows(
        self, request: HttpRequest, rows: SemanticQuerySet, group: ReviewGroup, unviewable: set[Any]
    ) -> list[ReviewRow]:
        """The group's shown rows for its table: each one's similarity to the first, an excerpt
        and a date (neither of a row in ``unviewable``, whose change form the ModelAdmin refuses)."""
        field = self.get_embedding_field()  # type: ignore[attr-defined]
        shown = group.shown_rows
        scores = similarities_to(rows, shown[0].pk, [obj.pk for obj in shown[1:]], field)
        date_field = self.get_duplicate_date_field()
        table = [
            ReviewRow(
                obj=obj,
                similarity=None if n == 0 else scores.get(obj.pk),
                excerpt="" if obj.pk in unviewable else self.duplicate_excerpt(request, obj),
                date=getattr(obj, date_field) if date_field and obj.pk not in unviewable else None,
            )
            for n, obj in enumerate(shown)
        ]
        return table[:1] + sorted(table[1:], key=lambda row: -(row.similarity if row.similarity is not None else -2))

    def duplicate_excerpt(self, request: HttpRequest, obj: models.Model) -> str:
        """The start of a row's text, from the parts of the field's ``source`` its change form shows
        this user (``get_fieldsets()``: ``fields``, ``exclude``, ``readonly_fields`` apply, as on the
        Compare page); a model field kept off the form is left out.

        A method or property part is no form field, and may read any field of the row: it is
        shown when the form shows every field Django's own form would (the ModelAdmin hides none:
        see :func:`on_default_form`), or lists it in ``readonly_fields``. Override this for a finer rule."""
        field = self.get_embedding_field()  # type: ignore[attr-defined]
        on_form = set(flatten_fieldsets(self.get_fieldsets(request, obj)))  # type: ignore[attr-defined]
        opts = obj._meta
        hides_none = {f.name for f in [*opts.concrete_fields, *opts.many_to_many] if on_default_form(f)} <= on_form
        shown = [name for name in field.source if name in on_form or (hides_none and not is_model_field(opts, name))]
        text = " ".join(read_part(obj, name) for name in shown)
        return Truncator(" ".join(text.split())).chars(self.duplicate_excerpt_chars)

    def duplicate_page_threshold(self, request: HttpRequest) -> tuple[float, str, str | None]:
        """The threshold to search with, the one to show in the form (the user's own, even when
        it is wrong), and what is wrong with it. The number may be written as the active
        language writes numbers ("0,9" in German), as the page shows them, or with a point."""
        raw = (request.GET.get("threshold") or request.POST.get("threshold") or "").strip()
        if not raw:
            return self.duplicate_threshold, formats.localize_input(self.duplicate_threshold), None
        try:
            value = float(formats.sanitize_separators(raw))
            check_threshold(value, "threshold")
        except ValueError:
            return self.duplicate_threshold, raw, _("The threshold must be a number from -1 to 1; “%s” is not.") % raw
        return value, raw, None

    def get_duplicate_date_field(self) -> str | None:
        """The date shown for each row of duplicate review: ``duplicate_date_field``, else the
        model's ``get_latest_by``, else its first date set automatically (``auto_now_add``,
        ``auto_now``). The embedding's own bookkeeping dates are never chosen."""
        opts = self.model._meta  # type: ignore[attr-defined]
        if self.duplicate_date_field is not None:
            return self.duplicate_date_field or None
        if isinstance(opts.get_latest_by, str):
            return opts.get_latest_by.lstrip("-")
        for f in opts.concrete_fields:
            if isinstance(f, models.DateField) and (f.auto_now_add or f.auto_now):
                return f.name
        return None

    def duplicate_date_label(self) -> str | None:
        name = self.get_duplicate_date_field()
        if name is None:
            return None
        return capfirst(self.model._meta.get_field(name).verbose_name)  # type: ignore[attr-defined]


def is_model_field(opts: Any, name: str) -> bool:
    """True when ``name`` is a field of the model (the form may leave it out), not a method or property."""
    try:
        opts.get_field(name)
    except FieldDoesNotExist:
        return False
    return True


def on_default_form(f: Any) -> bool:
    """Whether a plain ModelAdmin's change form shows ``f``: Django's own leaves out fields that
    are not editable, auto fields (an explicit ``id = models.AutoField(primary_key=True)`` too:
    it makes no form field) and many-to-many relations through a model of one's own."""
    if not f.editable or f.auto_created or isinstance(f, models.AutoField):
        return False
    return not (f.many_to_many and not f.remote_field.through._meta.auto_created)
