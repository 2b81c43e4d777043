"""Searches on the QuerySets of other libraries: django-model-utils' ``InheritanceQuerySet``,
whose ``select_subclasses()`` builds each row as its child class and copies onto it only
the annotations it was told of, on real PostgreSQL with vectors from the fake Gemini server."""

import pytest
from django.contrib import admin
from django.core.cache import cache
from django.db.models import Value
from django.test import RequestFactory
from model_utils.managers import InheritanceQuerySet

from semantic import embed_pending, hybrid
from semantic.admin import SemanticAdminMixin
from semantic.admin_changelist import SIMILARITY, STATE_ANNOTATION
from tests.testapp.models import Place, Restaurant

pytestmark = pytest.mark.django_db(transaction=True)

SEARCH = ["distance", "similarity"]
FUSED = ["score", "keyword_rank", "meaning_rank"]


@pytest.fixture
def places(fake_gemini):
    cache.clear()
    Restaurant.objects.create(name="pasta place with fresh pasta", cuisine="italian")
    Place.objects.create(name="city park with a pond")
    embed_pending()
    fake_gemini.reset()


def shown(rows, names):
    """Each row's class and the annotations it carries (a missing one is "missing")."""
    return [(type(row).__name__, {name: getattr(row, name, "missing") != "missing" for name in names}) for row in rows]


@pytest.mark.parametrize("order", ["select_subclasses first", "similar_to first"])
def test_child_rows_of_select_subclasses_carry_similarity_and_distance(places, order):
    if order == "select_subclasses first":
        rows = list(Place.objects.select_subclasses().similar_to("fresh pasta"))
    else:
        rows = list(Place.objects.similar_to("fresh pasta").select_subclasses())
    every = dict.fromkeys(SEARCH, True)
    assert shown(rows, SEARCH) == [("Restaurant", every), ("Place", every)]
    assert rows[0].similarity == pytest.approx(1 - rows[0].distance)
    assert rows[0].similarity > rows[1].similarity


def test_annotations_before_and_after_the_search_reach_child_rows(places):
    """model-utils' annotate() names only its own call's annotations; the search names them all."""
    rows = list(
        Place.objects.annotate(before=Value(1)).select_subclasses().similar_to("fresh pasta").annotate(after=Value(2))
    )
    every = dict.fromkeys([*SEARCH, "before", "after"], True)
    assert shown(rows, [*SEARCH, "before", "after"]) == [("Restaurant", every), ("Place", every)]


def test_child_rows_read_one_by_one_carry_similarity(places):
    rows = list(Place.objects.select_subclasses().similar_to("fresh pasta").iterator())
    assert [type(row).__name__ for row in rows] == ["Restaurant", "Place"]
    assert rows[0].similarity > rows[1].similarity
    assert Place.objects.select_subclasses().similar_to("fresh pasta").first().similarity == rows[0].similarity


def test_child_rows_of_hybrid_carry_score_and_ranks(places):
    rows = list(hybrid(Place.objects.select_subclasses(), "fresh pasta", keyword_fields=["name"]))
    every = dict.fromkeys(FUSED, True)
    assert shown(rows, FUSED) == [("Restaurant", every), ("Place", every)]
    assert (rows[0].keyword_rank, rows[0].meaning_rank) == (1, 1)


class PlaceAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """Lists each row as its child class, the usual way with model-utils."""

    def get_queryset(self, request):
        return super().get_queryset(request).select_subclasses()


class WithoutMixin(admin.ModelAdmin):
    def get_queryset(self, request):
        return InheritanceQuerySet(self.model)  # what a model-utils manager without the mixin gives


class PlaceAdminWithoutMixin(SemanticAdminMixin, WithoutMixin):
    def get_queryset(self, request):
        return super().get_queryset(request).select_subclasses()


@pytest.mark.parametrize("admin_class", [PlaceAdmin, PlaceAdminWithoutMixin], ids=["mixin", "no mixin"])
def test_admin_search_rows_of_child_classes_keep_their_state_and_similarity(places, admin_user, admin_class):
    request = RequestFactory().get("/", {"q": "fresh pasta", "semantic": "1"})
    request.user = admin_user
    model_admin = admin_class(Place, admin.site)
    rows, _ = model_admin.get_search_results(request, model_admin.get_queryset(request), "fresh pasta")
    rows = list(rows)
    assert [type(row).__name__ for row in rows] == ["Restaurant", "Place"]
    assert [getattr(row, STATE_ANNOTATION, "") for row in rows] == ["embedded", "embedded"]
    assert all(getattr(row, SIMILARITY, None) is not None for row in rows)
