"""Django admin: the "Topics" page, groups of similar rows of the changelist (:mod:`semantic.clusters`).

The changelist links to it with its own query string, so the page groups exactly
the rows the list shows (filters, search, search by meaning, ``get_queryset()``).
Each group links back to the changelist showing just its rows.

How a link names a group: ``?semantic_topic=<number>.<k>.<digest>`` next to the
list's own filter, where ``digest`` is a hash of the group's primary keys. A list of
primary keys (``?pk__in=...``) outgrows what browsers and servers accept after a
few thousand rows. Instead:

1. The Topics page keeps each group's primary keys in Django's cache (``default``)
   under the model and the token, for ``TOPIC_CACHE_SECONDS``. The changelist shows
   exactly those rows (that the list's filter still admits): the group as the page
   showed it, however the table changed since. A user from whom the ModelAdmin's
   ``get_queryset()`` hides some of those rows is served as if the cache had lost
   them (2.): the group's label and size must not describe rows they may not see.
2. When the cache has lost them (expired, evicted, another process's local-memory
   cache, a link opened elsewhere), the changelist clusters its rows again with the
   same ``k`` and seed, which gives the same groups while the rows and their vectors
   are unchanged. When the hash differs, the list says the rows changed and shows
   the group as it is now. This costs one k-means run per page of the list: on this
   project's busy 2-core test machine, 16 s for 1,000 rows and 30 s for 5,000, so
   a cache shared by the server's processes (Redis, Memcached, database) is worth
   having when links are followed often.

Both group at most ``TOPICS_MAX_ROWS`` rows (the same sample, :func:`~semantic.clusters.sample_rows`),
and the page says when it grouped a sample: k-means runs in the web request, and over
100,000 rows it took 55 s, past the 30 s a web server such as gunicorn waits. For the
same reason both make at most ``semantic_topic_max_groups`` groups (its time grows with
the groups too: 300 rows into 299 groups took 18 s on a busy 2-core machine).

:class:`TopicsMixin` is a base of ``SemanticAdminMixin`` and uses its
``get_embedding_field()``, ``render_semantic()`` and permission hooks.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from django.contrib import messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import models, router
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import formats
from django.utils.translation import gettext_lazy as _

from semantic import tenancy
from semantic.clusters import Cluster, choose_k, cluster, sample_rows
from semantic.conf import semantic_settings as conf

#: The changelist's parameter that narrows it to one group.
TOPIC_VAR = "semantic_topic"
#: The Topics page's own parameter: how many groups (blank: chosen automatically).
GROUPS_VAR = "semantic_groups"
#: How long the Topics page's groups stay in the cache for its links.
TOPIC_CACHE_SECONDS = 24 * 60 * 60
#: Seed of every clustering here: the changelist must find the groups the page showed.
SEED = 0
TOPIC_CHANGED = _(
    "The rows have changed since the Topics page grouped them: showing topic %(number)s as it is now. "
    "Open Topics again for up-to-date groups."
)
GROUPS_OUT_OF_RANGE = _(
    "The number of groups must be from 1 to %(available)s (the items of this list that have embeddings), not %(asked)s."
)
#: The growth column's heading for each period (semantic.clusters.PERIODS): whole, for translators.
GROWTH_HEADINGS = {"day": _("Growth (last day)"), "week": _("Growth (last week)"), "month": _("Growth (last month)")}
#: A topic's growth on the Topics page: "+100% (5 → 10)". A right-to-left language may turn the arrow.
GROWTH = _("%(percent)s%% (%(before)s → %(after)s)")
GROUPS_OVER_MOST = _(
    "The number of groups must be from 1 to %(most)s (the most this page makes: grouping takes longer the more "
    "groups it makes), not %(asked)s."
)
TOO_FEW_TO_GROUP = _("Grouping needs at least two items with embeddings; this list has %(count)s.")
TOPIC_SHOWN = _("Showing topic %(number)s of %(k)s: “%(label)s” (%(size)s rows).")
TOPICS_SAMPLED = _(
    "These topics were found in a sample of %(sample)s of the %(total)s items of the list, and each topic "
    "lists only the items of the sample. To group them all, narrow the list with a filter or a search "
    'to at most %(sample)s items, or raise SEMANTIC["TOPICS_MAX_ROWS"] (the page then takes longer).'
)


def digest(pks: list[Any]) -> str:
    """A short fingerprint of a group's rows, the same for the same primary keys in any order."""
    return hashlib.blake2b(",".join(sorted(str(pk) for pk in pks)).encode(), digest_size=5).hexdigest()


#: What :func:`topic_token` makes: two small numbers and :func:`digest`'s ten hex digits.
TOPIC_TOKEN = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})\.([0-9a-f]{10})")


def topic_token(group: Cluster, k: int) -> str:
    return f"{group.number}.{k}.{digest(group.pks)}"


def topic_cache_key(model: type[models.Model], token: str) -> str:
    """Where a topic's label and rows are kept: per schema with schemas per tenant, whose rows share keys."""
    return f"semantic:topic:{tenancy.scope(router.db_for_read(model))}{model._meta.label}:{token}"


def parse_topic(raw: str) -> tuple[int, int, str]:
    """The parts of a link's token; anything else (a garbled or hand-edited link) is an invalid
    filter, never a cache key: memcached refuses spaces, control characters and long keys."""
    match = TOPIC_TOKEN.fullmatch(raw)
    if match is None:
        raise IncorrectLookupParameters(f"{TOPIC_VAR}={raw[:40]!r} is not number.k.digest")
    number, k, fingerprint = match.groups()
    return int(number), int(k), fingerprint


class TopicChangeList:
    """A ChangeList that narrows itself to one group when the query string names one."""

    def get_filters_params(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        # Kept in filter_params, so paging and sorting links keep the group; not a field lookup.
        found = super().get_filters_params(params)  # type: ignore[misc]
        found.pop(TOPIC_VAR, None)
        return found

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> models.QuerySet:
        rows = super().get_queryset(request, exclude_parameters)  # type: ignore[misc]
        raw = request.GET.get(TOPIC_VAR)
        if not raw:
            return rows
        if not hasattr(self, "topic_pks"):
            # Clustered once per request, on the full filter (facet counts call again without one filter).
            self.topic_pks = self.find_topic(request, rows, *parse_topic(raw))
        # The group counts as a filter: "Clear all filters" shows and drops it too.
        self.has_active_filters = True
        cleared = without(QueryDict(self.clear_all_filters_qs.lstrip("?")), TOPIC_VAR)  # type: ignore[has-type]
        self.clear_all_filters_qs = f"?{cleared.urlencode()}"
        return rows.filter(pk__in=self.topic_pks)

    def find_topic(self, request: HttpRequest, rows: models.QuerySet, number: int, k: int, fingerprint: str) -> list:
        if k > self.model_admin.semantic_topic_max_groups:  # type: ignore[attr-defined]
            # Never made by the page: a hand-made link, which would be clustered on a cache miss.
            raise IncorrectLookupParameters(f"{TOPIC_VAR}: {k} groups is more than the page makes")
        kept = cache.get(topic_cache_key(self.model, f"{number}.{k}.{fingerprint}"))  # type: ignore[attr-defined]
        if kept is not None and not self.hides_some(kept[1]):
            label, pks = kept
            if request.method == "GET":
                messages.info(request, TOPIC_SHOWN % {"number": number, "k": k, "label": label, "size": len(pks)})
            return pks
        field = self.model_admin.get_embedding_field().name  # type: ignore[attr-defined]
        try:
            sample = sample_rows(rows, field=field, limit=conf.TOPICS_MAX_ROWS, seed=SEED)[0]
            groups = cluster(sample, field=field, k=k, seed=SEED, config=self.model_admin.semantic_topic_config)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise IncorrectLookupParameters(exc) from None
        group = next((g for g in groups if g.number == number), None)
        pks = group.pks if group else []
        if request.method == "GET":
            if group is None or digest(pks) != fingerprint:
                messages.warning(request, TOPIC_CHANGED % {"number": number})
            else:
                shown = {"number": number, "k": k, "label": group.label, "size": group.size}
                messages.info(request, TOPIC_SHOWN % shown)
        return pks

    def hides_some(self, pks: list) -> bool:
        """Whether ``get_queryset()`` hides some of these rows from this user: the cache is shared,
        and a group made for someone who sees more has a label and size made of rows this user may not see."""
        visible = self.root_queryset  # type: ignore[attr-defined]
        if not visible.query.where:
            return False
        existing = self.model._default_manager.filter(pk__in=pks)  # type: ignore[attr-defined]
        return existing.exclude(pk__in=visible.values("pk")).exists()


@functools.cache
def topic_changelist(base: type[ChangeList]) -> type[ChangeList]:
    return type(f"Topic{base.__name__}", (TopicChangeList, base), {})


def without(query: QueryDict, *names: str) -> QueryDict:
    kept = query.copy()
    for name in names:
        kept.pop(name, None)
    return kept


class TopicsMixin:
    """The Topics page and the changelist's ``semantic_topic`` parameter."""

    #: The date field growth is counted on; None: ``date_hierarchy``, else the model's first date field.
    semantic_topic_date_field: str | None = None
    #: Growth compares the last two of these: "day", "week" or "month".
    semantic_topic_period = "week"
    #: The text search configuration whose stop words topic labels leave out ("german");
    #: None: the model's KeywordIndex's, else "english".
    semantic_topic_config: str | None = None
    #: The most groups the Topics page makes, and a topic link names: k-means runs in the web request
    #: and takes longer the more groups it makes (and rows it groups, ``TOPICS_MAX_ROWS``).
    #: The page chooses at most 20 by itself (fewer when this is lower).
    semantic_topic_max_groups = 50
    topics_template = "semantic/admin/topics.html"

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return topic_changelist(super().get_changelist(request, **kwargs))  # type: ignore[misc]

    def get_urls(self) -> list[Any]:
        opts = self.model._meta  # type: ignore[attr-defined]
        wrap = self.admin_site.admin_view  # type: ignore[attr-defined]
        return [
            path("topics/", wrap(self.topics_view), name=f"{opts.app_label}_{opts.model_name}_topics"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # The raw query string: whatever the changelist strips from request.GET, Topics must see too.
        query = without(QueryDict(request.META.get("QUERY_STRING", "")), TOPIC_VAR, "p", "e")
        url = self.semantic_url("topics")  # type: ignore[attr-defined]
        if not self.has_semantic_view_permission(request):  # type: ignore[attr-defined]
            url = None  # the page would answer 403
        elif query:
            url = f"{url}?{query.urlencode()}"
        context = {"semantic_topics_url": url, **(extra_context or {})}
        return super().changelist_view(request, context)  # type: ignore[misc]

    def topic_date_field(self) -> str | None:
        if self.semantic_topic_date_field:
            return self.semantic_topic_date_field
        if self.date_hierarchy:  # type: ignore[attr-defined]
            return self.date_hierarchy  # type: ignore[attr-defined]
        dates = (f.name for f in self.model._meta.concrete_fields if isinstance(f, models.DateField))  # type: ignore[attr-defined]
        return next(dates, None)

    def topics_view(self, request: HttpRequest) -> HttpResponse:
        """The groups of the rows the changelist shows for the same query string.

        The rows come from the changelist's own view (its response is never rendered),
        so every way the list narrows its rows applies here unchanged. GET only: the
        changelist's view runs the actions posted to it.
        """
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        if not self.has_semantic_view_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        asked = request.GET.get(GROUPS_VAR, "").strip()
        filters = without(request.GET, GROUPS_VAR, TOPIC_VAR, "p", "e")
        request.GET = filters
        listed = self.changelist_view(request)
        if not isinstance(listed, TemplateResponse) or "cl" not in (listed.context_data or {}):
            return HttpResponseRedirect(self.semantic_url("changelist") + "?e=1")  # type: ignore[attr-defined]
        rows = listed.context_data["cl"].queryset
        groups, k, error, total = self.topic_groups(rows, asked)
        changelist = self.semantic_url("changelist")  # type: ignore[attr-defined]
        for group in groups:
            cache.set(topic_cache_key(self.model, topic_token(group, k)), (group.label, group.pks), TOPIC_CACHE_SECONDS)  # type: ignore[attr-defined, arg-type]
            group.url = f"{changelist}?{urlencode_with(filters, TOPIC_VAR, topic_token(group, k))}"
            group.growth_text = growth_text(group)
        context = {
            "groups": groups,
            "k": k,
            "asked": asked,
            "error": error,
            "filters": list(filters.lists()),
            "list_url": f"{changelist}?{filters.urlencode()}" if filters else changelist,
            "rows_count": sum(g.size for g in groups),
            "sampled": TOPICS_SAMPLED
            % {"sample": formats.number_format(conf.TOPICS_MAX_ROWS), "total": formats.number_format(total)}
            if groups and total > conf.TOPICS_MAX_ROWS
            else "",
            "with_growth": bool(groups) and self.topic_date_field() is not None,
            "growth_heading": GROWTH_HEADINGS.get(self.semantic_topic_period, ""),
            "groups_var": GROUPS_VAR,
            "max_groups": self.semantic_topic_max_groups,
        }
        return self.render_semantic(request, self.topics_template, _("Topics"), context)  # type: ignore[attr-defined]

    def topic_groups(self, rows: models.QuerySet, asked: str) -> tuple[list[Cluster], int | None, str | None, int]:
        """The groups, the number of groups, what is wrong with the number asked for, and how
        many rows with a vector the list holds (more than ``TOPICS_MAX_ROWS``: a sample was grouped)."""
        embedding = self.get_embedding_field()  # type: ignore[attr-defined]
        # The same sample the changelist draws when a group's link finds the cache empty.
        rows, total = sample_rows(rows, field=embedding.name, limit=conf.TOPICS_MAX_ROWS, seed=SEED)
        # Checked here, in the page's words: semantic.clusters' errors speak of k and querysets.
        available = rows.filter(embedding.searchable()).count()
        if available < 2:
            return [], None, TOO_FEW_TO_GROUP % {"count": available}, total
        if asked:
            try:
                k = int(asked)
            except ValueError:
                return [], None, _("The number of groups must be a whole number; “%s” is not.") % asked, total
            most = self.semantic_topic_max_groups
            if not 1 <= k <= min(available, most):
                if available <= most:
                    return [], None, GROUPS_OUT_OF_RANGE % {"available": available, "asked": k}, total
                return [], None, GROUPS_OVER_MOST % {"most": most, "asked": k}, total
        else:
            k = min(choose_k(rows.filter(embedding.searchable()), embedding, seed=SEED), self.semantic_topic_max_groups)
        try:
            groups = cluster(
                rows,
                field=embedding.name,
                k=k,
                seed=SEED,
                date_field=self.topic_date_field(),
                period=self.semantic_topic_period,
                config=self.semantic_topic_config,
            )
        except ValueError as exc:
            return [], k, str(exc), total
        return groups, k, None, total


def urlencode_with(query: QueryDict, name: str, value: str) -> str:
    extended = query.copy()
    extended[name] = value
    return extended.urlencode()


def growth_text(group: Cluster) -> str:
    """ "+100% (5 → 10)": the change from the second-last period to the last, and the rows of
    each, with numbers written as the page's language writes them."""
    if group.growth is None or group.compared is None:
        return "—"
    (_, before), (_, after) = group.compared
    percent = round(group.growth * 100)
    return GROWTH % {
        "percent": ("+" if percent >= 0 else "") + formats.number_format(percent),
        "before": formats.number_format(before),
        "after": formats.number_format(after),
    }
