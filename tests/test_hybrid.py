"""Hybrid keyword + meaning search (semantic.hybrid) over the local MiniLM model.

The local model is used rather than the fake Gemini server because the fake's vectors
count shared words, so "found only by meaning" could not be told apart from "found by
keyword": MiniLM places a paraphrase with no word in common near the query.
"""

import pytest
from django.core.paginator import Paginator
from django.db import connection

from semantic import HybridQuerySet, embed_pending, hybrid
from semantic.keyword import keyword_search
from tests.docsapp.models import Doc

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


@pytest.fixture
def docs(semantic_settings):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    rows = {
        "keyword": Doc.objects.create(title="Release notes", text="The zyxquartz module was renamed in version 2."),
        "meaning": Doc.objects.create(
            title="Account help", text="Forgot your login credentials? Here is how to change them."
        ),
    }
    for title, text in FILLER:
        Doc.objects.create(title=title, text=text)
    embed_pending()
    return rows


def test_a_row_found_only_by_keyword_and_one_found_only_by_meaning_both_appear(docs):
    results = list(hybrid(Doc.objects.all(), QUERY, candidates=1))
    by_pk = {row.pk: row for row in results}
    keyword, meaning = by_pk[docs["keyword"].pk], by_pk[docs["meaning"].pk]
    assert keyword.keyword_rank == 1
    assert meaning.meaning_rank == 1 and meaning.keyword_rank is None
    assert results[0].score >= results[-1].score
    assert [row.score for row in results] == sorted((row.score for row in results), reverse=True)


def test_the_keyword_side_finds_only_rows_with_the_rare_word(docs):
    assert list(keyword_search(Doc.objects.all(), QUERY).values_list("pk", flat=True)) == [docs["keyword"].pk]


def test_a_short_text_outranks_a_long_one_with_the_word_as_often(semantic_settings):
    """Word frequency over the log of the length: a long text does not win by being long,
    and a short one with the word once is not tied with it (cover density ties them)."""
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    long = Doc.objects.create(title="Log", text="zyxquartz " + " ".join(f"word{i}" for i in range(400)))
    short = Doc.objects.create(title="Note", text="zyxquartz renamed")
    assert list(keyword_search(Doc.objects.all(), "zyxquartz").values_list("pk", flat=True)) == [short.pk, long.pk]


def test_scores_are_reciprocal_rank_fusion(docs):
    row = hybrid(Doc.objects.all(), QUERY, k=10, weights=(2.0, 0.5)).get(pk=docs["keyword"].pk)
    expected = 2.0 / (10 + row.keyword_rank) + (0.5 / (10 + row.meaning_rank) if row.meaning_rank else 0.0)
    assert row.score == pytest.approx(expected)


def test_weights_change_the_order(docs):
    keyword_first = hybrid(Doc.objects.all(), QUERY, k=1, weights=(1.0, 0.2)).first()
    meaning_first = hybrid(Doc.objects.all(), QUERY, k=1, weights=(0.2, 1.0)).first()
    assert keyword_first.pk == docs["keyword"].pk
    assert meaning_first.pk == docs["meaning"].pk


def test_a_zero_weight_leaves_that_side_out(docs):
    rows = list(hybrid(Doc.objects.all(), QUERY, weights=(1.0, 0.0)))
    assert [row.pk for row in rows] == [docs["keyword"].pk]
    assert rows[0].meaning_rank is None


def test_filters_before_and_after_rank_only_the_filtered_rows(docs):
    Doc.objects.filter(pk=docs["meaning"].pk).update(published=False)
    before = hybrid(Doc.objects.filter(published=True), QUERY, candidates=1)
    after = hybrid(Doc.objects.all(), QUERY, candidates=1).filter(published=True)
    for qs in (before, after):
        (row,) = qs
        # Both sides ranked the published rows: the meaning side's best is now the keyword row.
        assert (row.pk, row.keyword_rank, row.meaning_rank) == (docs["keyword"].pk, 1, 1)


def test_pagination_walks_the_fused_order(docs):
    # Two candidates a side: at most four of the eight rows, so count() must see the fusion.
    everything = [row.pk for row in hybrid(Doc.objects.all(), QUERY, candidates=2)]
    assert 2 <= len(everything) <= 4
    pages = Paginator(hybrid(Doc.objects.filter(published=True), QUERY, candidates=2), 1)
    assert pages.count == len(everything)
    walked = [row.pk for number in pages.page_range for row in pages.page(number)]
    assert walked == everything


def test_the_queryset_mixin(docs):
    qs = HybridQuerySet(Doc)
    assert [row.pk for row in qs.hybrid_search(QUERY)] == [row.pk for row in hybrid(Doc.objects.all(), QUERY)]


def test_the_gin_index_serves_the_keyword_side(docs):
    query = keyword_search(Doc.objects.all(), QUERY)
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        # Eight rows: PostgreSQL would rightly scan the table; make it show the plan it uses at scale.
        cursor.execute("SET enable_seqscan = off")
        try:
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(line for (line,) in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
    assert "doc_keywords" in plan, plan


def test_the_index_is_the_expression_queries_use():
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'doc_keywords'")
        (definition,) = cursor.fetchone()
    assert "USING gin" in definition
    assert "to_tsvector('english'::regconfig" in definition


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
    with pytest.raises(ValueError, match="empty text"):
        hybrid(Doc.objects.all(), "  ")
