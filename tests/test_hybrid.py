"""Hybrid keyword + meaning search (semantic.hybrid) over the local MiniLM model.

The local model is used rather than the fake Gemini server because the fake's vectors
count shared words, so "found only by meaning" could not be told apart from "found by
keyword": MiniLM places a paraphrase with no word in common near the query.
"""

import re

import pytest
from django.core.paginator import Paginator
from django.db import NotSupportedError, connection, models
from django.db.models import Exists, OuterRef, Prefetch, Subquery
from django.utils.translation import gettext_lazy

from semantic import EmptyQuery, HybridQuerySet, SemanticQuerySetMixin, context, embed_pending, hybrid
from semantic.hybrid import OUTER_REF
from semantic.keyword import keyword_search
from semantic.registry import get_embedding_field
from semantic.search_arguments import SLICED
from tests.docsapp.models import Doc, Page, Shelf

pytestmark = pytest.mark.django_db(transaction=True)

QUERY = "Cannot remember my password to sign in, zyxquartz"
FILLER = [
    ("Train timetables", "The train to Paris leaves at nine and arrives before noon."),
    ("Gardening", "Tomatoes need sun, water and a stake to climb."),
    ("Cooking pasta", "Boil salted water, add the pasta and stir now and then."),
    ("Bird migration", "Swallows fly south for the winter in large flocks."),
    ("Stock markets", "Shares fell sharply after the central bank raised rates."),
    ("Football", "The home side scored twice in the second half."),
]


@pytest.fixture(params=[Doc, Page], ids=["stored column", "expression"])
def model(request):
    """Doc keeps its words in a stored tsvector column; Page's KeywordIndex is an expression."""
    return request.param


@pytest.fixture
def docs(semantic_settings, model):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    rows = {
        "keyword": model.objects.create(title="Release notes", text="The zyxquartz module was renamed in version 2."),
        "meaning": model.objects.create(
            title="Account help", text="Forgot your login credentials? Here is how to change them."
        ),
    }
    for title, text in FILLER:
        model.objects.create(title=title, text=text)
    embed_pending()
    return rows


def test_a_row_found_only_by_keyword_and_one_found_only_by_meaning_both_appear(docs, model):
    results = list(hybrid(model.objects.all(), QUERY, candidates=1))
    by_pk = {row.pk: row for row in results}
    keyword, meaning = by_pk[docs["keyword"].pk], by_pk[docs["meaning"].pk]
    assert keyword.keyword_rank == 1
    assert meaning.meaning_rank == 1 and meaning.keyword_rank is None
    assert results[0].score >= results[-1].score
    assert [row.score for row in results] == sorted((row.score for row in results), reverse=True)


def test_control_characters_in_the_text_are_searched_as_spaces_on_both_sides(docs, model):
    """A NUL from a query string (``?q=zyx%00quartz``) is refused by PostgreSQL in any text parameter."""
    text = QUERY.replace(" ", "\x00", 1)
    assert [row.pk for row in keyword_search(model.objects.all(), text)] == [docs["keyword"].pk]
    assert docs["keyword"].pk in [row.pk for row in hybrid(model.objects.all(), text)]


def test_the_keyword_side_finds_only_rows_with_the_rare_word(docs, model):
    assert list(keyword_search(model.objects.all(), QUERY).values_list("pk", flat=True)) == [docs["keyword"].pk]


def test_a_short_text_outranks_a_long_one_with_the_word_as_often(semantic_settings, model):
    """Word frequency over the log of the length: a long text does not win by being long,
    and a short one with the word once is not tied with it (cover density ties them)."""
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    long = model.objects.create(title="Log", text="zyxquartz " + " ".join(f"word{i}" for i in range(400)))
    short = model.objects.create(title="Note", text="zyxquartz renamed")
    assert list(keyword_search(model.objects.all(), "zyxquartz").values_list("pk", flat=True)) == [short.pk, long.pk]


def test_scores_are_reciprocal_rank_fusion(docs, model):
    row = hybrid(model.objects.all(), QUERY, k=10, weights=(2.0, 0.5)).get(pk=docs["keyword"].pk)
    expected = 2.0 / (10 + row.keyword_rank) + (0.5 / (10 + row.meaning_rank) if row.meaning_rank else 0.0)
    assert row.score == pytest.approx(expected)


def test_weights_change_the_order(docs, model):
    keyword_first = hybrid(model.objects.all(), QUERY, k=1, weights=(1.0, 0.2)).first()
    meaning_first = hybrid(model.objects.all(), QUERY, k=1, weights=(0.2, 1.0)).first()
    assert keyword_first.pk == docs["keyword"].pk
    assert meaning_first.pk == docs["meaning"].pk


def test_a_zero_weight_leaves_that_side_out(docs, model):
    rows = list(hybrid(model.objects.all(), QUERY, weights=(1.0, 0.0)))
    assert [row.pk for row in rows] == [docs["keyword"].pk]
    assert rows[0].meaning_rank is None
    rows = list(hybrid(model.objects.all(), QUERY, weights=(0.0, 1.0), candidates=3))
    assert [(row.meaning_rank, row.keyword_rank) for row in rows] == [(1, None), (2, None), (3, None)]


def test_filters_before_and_after_rank_only_the_filtered_rows(docs, model):
    model.objects.filter(pk=docs["meaning"].pk).update(published=False)
    before = hybrid(model.objects.filter(published=True), QUERY, candidates=1)
    after = hybrid(model.objects.all(), QUERY, candidates=1).filter(published=True)
    for qs in (before, after):
        (row,) = qs
        # Both sides ranked the published rows: the meaning side's best is now the keyword row.
        assert (row.pk, row.keyword_rank, row.meaning_rank) == (docs["keyword"].pk, 1, 1)


def test_pagination_walks_the_fused_order(docs, model):
    # Two candidates a side: at most four of the eight rows, so count() must see the fusion.
    everything = [row.pk for row in hybrid(model.objects.all(), QUERY, candidates=2)]
    assert 2 <= len(everything) <= 4
    pages = Paginator(hybrid(model.objects.filter(published=True), QUERY, candidates=2), 1)
    assert pages.count == len(everything)
    walked = [row.pk for number in pages.page_range for row in pages.page(number)]
    assert walked == everything


def test_the_queryset_mixin(docs, model):
    qs = HybridQuerySet(model)
    assert [row.pk for row in qs.hybrid_search(QUERY)] == [row.pk for row in hybrid(model.objects.all(), QUERY)]


def test_a_queryset_of_the_projects_own_with_the_semantic_mixin(docs, model):
    # What the README offers a model whose manager already has a QuerySet of its own.
    own = type("OwnQuerySet", (SemanticQuerySetMixin, models.QuerySet), {})(model)
    assert [row.pk for row in hybrid(own.all(), QUERY)] == [row.pk for row in hybrid(model.objects.all(), QUERY)]
    with pytest.raises(TypeError, match="SemanticQuerySetMixin first among the bases"):
        hybrid(models.QuerySet(model), QUERY)


def test_explain_shows_the_fused_statements_plan(docs, model):
    plan = hybrid(model.objects.all(), QUERY)[:5].explain()
    assert "Limit" in plan and "Sort" in plan


def test_the_gin_index_serves_the_keyword_side(docs, model):
    query = keyword_search(model.objects.all(), QUERY)
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        # Eight rows: PostgreSQL would rightly scan the table; make it show the plan it uses at scale.
        cursor.execute("SET enable_seqscan = off")
        try:
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(line for (line,) in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
    assert f"{model._meta.model_name}_keywords" in plan, plan
    if model is Doc:  # ranked from the stored column: no tsvector computed from the rows' text, only the query's
        assert re.findall(r"to_tsvector\(([^)]*)\)", sql) == ["%s::regconfig, %s"] * 2


def test_the_index_is_the_expression_queries_use_or_the_stored_column():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN ('doc_keywords', 'page_keywords')"
        )
        definitions = dict(cursor.fetchall())
    assert "USING gin" in definitions["page_keywords"]
    assert "to_tsvector('english'::regconfig" in definitions["page_keywords"]
    assert definitions["doc_keywords"].endswith("USING gin (search)")
    # The column is PostgreSQL's to keep in step: an edit's words are found at once.
    row = Doc.objects.create(title="Fresh", text="a qwertyzz appears")
    assert list(keyword_search(Doc.objects.all(), "qwertyzz").values_list("pk", flat=True)) == [row.pk]
    Doc.objects.filter(pk=row.pk).update(text="gone")
    assert not keyword_search(Doc.objects.all(), "qwertyzz").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"k": -1}, "k is a rank offset"),
        ({"weights": (0, 0)}, "weights is"),
        ({"weights": (1,)}, "weights is"),
        ({"candidates": 0}, "candidates is"),
        ({"match": "some"}, "match is one of"),
    ],
)
def test_bad_options_say_what_is_expected(semantic_settings, options, message):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    with pytest.raises(ValueError, match=message):
        list(hybrid(Doc.objects.all(), "anything", **options))


def test_an_empty_text_is_refused():
    with pytest.raises(EmptyQuery, match="empty text"):
        hybrid(Doc.objects.all(), "  ")


def test_passages_rank_the_meaning_side_by_a_late_passage_and_annotate_it(semantic_settings):
    """A row whose only words about the query sit in its last paragraph, beyond what the
    local model reads of a row (256 word pieces): found by meaning only through its
    passages, and returned with that passage."""
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    filler = " ".join(f"{text}" for _, text in FILLER)
    late = Doc.objects.create(
        title="Long travel diary",
        text="\n\n".join([filler] * 6 + ["Forgot your login credentials? Here is how to change them."]),
    )
    for title, text in FILLER:
        Doc.objects.create(title=title, text=text)
    embed_pending()
    query = "Cannot remember my password to sign in"
    by_row = {row.pk: row.meaning_rank for row in hybrid(Doc.objects.all(), query, weights=(0.0, 1.0))}
    found = list(hybrid(Doc.objects.all(), query, weights=(0.0, 1.0), passages=True))
    assert found[0].pk == late.pk and by_row[late.pk] != 1
    assert "login credentials" in found[0].passage_text
    source = get_embedding_field(Doc).source_text(late)  # title and text: what the passages were cut from
    assert source[found[0].passage_start : found[0].passage_end] == found[0].passage_text
    assert found[0].passage_position == max(row.passage_position for row in found if row.pk == late.pk)
    both = list(hybrid(Doc.objects.filter(title__startswith="Long"), query, passages=True))
    assert [row.pk for row in both] == [late.pk] and both[0].passage_text == found[0].passage_text


def test_passages_need_a_field_with_passages(docs):
    with pytest.raises(ValueError, match="passages=True"):
        hybrid(Page.objects.all(), QUERY, passages=True)


def test_filters_on_the_score_and_ranks_keep_fused_rows(docs, model):
    """A filter on the fusion's own annotations applies to the fused rows; the sides
    rank as before (they would otherwise compile the filter, which fuses again)."""
    fused = list(hybrid(model.objects.all(), QUERY))
    best = fused[0].score
    qs = hybrid(model.objects.all(), QUERY)
    assert [row.pk for row in qs.filter(score__gte=best)] == [fused[0].pk]
    assert qs.filter(score__gte=best).count() == 1
    assert [row.pk for row in qs.filter(keyword_rank__isnull=False)] == [docs["keyword"].pk]
    found_by_meaning = [row.pk for row in fused if row.meaning_rank is not None]
    assert [row.pk for row in qs.exclude(meaning_rank=None)] == found_by_meaning
    by_meaning = {row.pk: row.meaning_rank for row in fused}
    assert {row.pk: row.meaning_rank for row in qs.filter(keyword_rank__isnull=False)} == {
        docs["keyword"].pk: by_meaning[docs["keyword"].pk]
    }


@pytest.mark.parametrize("model", [Doc], ids=["stored column"])
def test_a_prefetch_takes_the_best_rows_of_each_related_object(docs, model):
    """Django's per-object top-N prefetch filters on a window ordered by the score."""
    fused = [row.pk for row in hybrid(Doc.objects.all(), QUERY)]
    fillers = [pk for pk in fused if pk not in (docs["keyword"].pk, docs["meaning"].pk)]
    shelves = {"keyword": Shelf.objects.create(name="keyword"), "meaning": Shelf.objects.create(name="meaning")}
    shelves["keyword"].docs.set([docs["keyword"].pk, *fillers[:3]])
    shelves["meaning"].docs.set([docs["meaning"].pk, *fillers[3:]])
    top = Prefetch("docs", queryset=hybrid(Doc.objects.all(), QUERY)[:2], to_attr="top")
    for shelf in Shelf.objects.prefetch_related(top):
        on_shelf = set(shelf.docs.values_list("pk", flat=True))
        assert [row.pk for row in shelf.top] == [pk for pk in fused if pk in on_shelf][:2]


@pytest.mark.parametrize("model", [Doc], ids=["stored column"])
def test_a_row_on_several_shelves_ranks_as_one_row(docs, model):
    """A filter across a ManyToMany repeats a row per matching shelf; each side counts it once."""
    filler = Doc.objects.exclude(pk__in=[docs["keyword"].pk, docs["meaning"].pk]).first()
    for name in ("a", "b", "c"):
        Shelf.objects.create(name=name).docs.set([docs["keyword"].pk, filler.pk])
    Shelf.objects.create(name="d").docs.set([docs["meaning"].pk])
    shelved = [docs["keyword"].pk, docs["meaning"].pk, filler.pk]

    def fused(qs):
        return list(dict.fromkeys((row.pk, row.score, row.keyword_rank, row.meaning_rank) for row in qs))

    alone = fused(hybrid(Doc.objects.filter(pk__in=shelved), QUERY))
    assert fused(hybrid(Doc.objects.filter(shelves__name__in=["a", "b", "c", "d"]), QUERY)) == alone


@pytest.mark.parametrize("model", [Doc], ids=["stored column"])
def test_a_manager_is_searched_as_its_queryset(docs, model):
    shelf = Shelf.objects.create(name="help")
    shelf.docs.set([docs["keyword"].pk, docs["meaning"].pk])
    assert [row.pk for row in hybrid(Doc.objects, QUERY)] == [row.pk for row in hybrid(Doc.objects.all(), QUERY)]
    assert [row.pk for row in hybrid(shelf.docs, QUERY)] == [
        row.pk for row in hybrid(Doc.objects.filter(shelves=shelf), QUERY)
    ]


def test_a_sliced_queryset_is_not_searched(semantic_settings):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    with pytest.raises(TypeError, match=re.escape(SLICED)):
        hybrid(Doc.objects.order_by("-pk")[:5], QUERY)


@pytest.mark.parametrize("model", [Doc], ids=["stored column"])
def test_context_quotes_the_best_rows_of_a_hybrid_search(docs, model):
    top = hybrid(Doc.objects.all(), QUERY)[:2]
    rows = [row.pk for row in top]
    quoted = context(top, QUERY, budget_chars=10**5)
    assert {p.row.pk for p in quoted} == set(rows)
    assert len(Doc.objects.all()) > 2 and len({p.row.pk for p in context(Doc, QUERY, budget_chars=10**5)}) > 2


def test_a_lazy_translated_text_is_searched_as_text(docs, model):
    lazy = gettext_lazy(QUERY)
    assert [row.pk for row in hybrid(model.objects.all(), lazy)] == [
        row.pk for row in hybrid(model.objects.all(), QUERY)
    ]
    with pytest.raises(TypeError, match="hybrid\\(\\) searches for a text, not int"):
        hybrid(model.objects.all(), 42)


@pytest.mark.parametrize("model", [Doc], ids=["stored column"])
def test_a_subquery_that_depends_on_the_outer_row_is_refused_with_a_clear_error(docs, model):
    """Each side is searched by a statement of its own, where the outer row does not exist."""
    Shelf.objects.create(name="help").docs.set([docs["keyword"].pk])
    per_shelf = hybrid(Doc.objects.filter(shelves=OuterRef("pk")), QUERY)
    with pytest.raises(NotSupportedError, match=re.escape(OUTER_REF)):
        list(Shelf.objects.annotate(best=Subquery(per_shelf.values("title")[:1])))
    with pytest.raises(NotSupportedError, match=re.escape(OUTER_REF)):
        list(Shelf.objects.filter(Exists(hybrid(Doc.objects.all(), QUERY).filter(shelves=OuterRef("pk")))))
    # Without an outer reference, a fused search is an ordinary subquery.
    assert list(Shelf.objects.filter(docs__in=hybrid(Doc.objects.all(), QUERY)).values_list("name", flat=True)) == [
        "help"
    ]
