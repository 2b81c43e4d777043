"""What a hybrid() search returns besides its forward order: unions of searches,
reverse() and last(), and the ``candidates`` bound on the rows returned."""

import re
from pathlib import Path

import pytest
from django.core.paginator import Paginator
from django.db import NotSupportedError

from semantic import embed_pending, hybrid, suspend_embedding
from semantic.hybrid import COMBINED, DEFAULT_CANDIDATES
from tests.docsapp.models import Doc, Page
from tests.test_hybrid import FILLER, QUERY

pytestmark = pytest.mark.django_db(transaction=True)

TEXTS = [
    ("Release notes", "The zyxquartz module was renamed in version 2."),
    ("Account help", "Forgot your login credentials? Here is how to change them."),
    ("Password policy", "A password must be twelve characters long and changed every year."),
    *FILLER[:3],
]


@pytest.fixture
def corpora(semantic_settings):
    """The texts in two corpora of Docs (the second without its last text), and as Pages."""
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    for corpus, texts in (("a", TEXTS), ("b", TEXTS[:-1])):
        for title, text in texts:
            Doc.objects.create(title=f"{title} ({corpus})", text=text, corpus_id=corpus)
    for title, text in TEXTS:
        Page.objects.create(title=title, text=text)
    embed_pending()


def best_first(rows):
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def test_a_union_of_searches_searches_each_with_its_own_filters(corpora):
    """A search over several categories: each part ranks its own rows, the union orders them by score."""
    a = hybrid(Doc.objects.filter(corpus_id="a"), QUERY)
    b = hybrid(Doc.objects.filter(corpus_id="b"), QUERY)
    expected = best_first([(row.pk, row.score) for row in [*a.all(), *b.all()]])
    assert len(expected) == 11
    union = a.union(b).order_by("-score", "pk")
    assert [(row.pk, row.score) for row in union] == expected
    assert [(row.pk, row.score) for row in union[:3]] == expected[:3]
    pages = Paginator(union, 4)
    assert pages.count == 11
    assert [row.pk for number in pages.page_range for row in pages.page(number)] == [pk for pk, _ in expected]
    ranks = {row.pk: (row.keyword_rank, row.meaning_rank) for row in [*a.all(), *b.all()]}
    assert {row.pk: (row.keyword_rank, row.meaning_rank) for row in union} == ranks


def test_a_union_of_two_models_values(corpora):
    docs = hybrid(Doc.objects.filter(corpus_id="a"), QUERY).values_list("pk", "title", "score")
    pages = hybrid(Page.objects.all(), QUERY).values_list("pk", "title", "score")
    expected = sorted([*docs.all(), *pages.all()], key=lambda row: (-row[2], row[1]))
    assert len(expected) == 12
    assert list(docs.union(pages).order_by("-score", "title")) == expected
    assert list(docs.union(pages).order_by("-score", "title")[:5]) == expected[:5]


def test_a_union_of_a_meaning_search_and_a_hybrid_search(corpora):
    meaning = Doc.objects.filter(corpus_id="a").similar_to(QUERY).values_list("pk", "similarity")
    fused = hybrid(Doc.objects.filter(corpus_id="b"), QUERY).values_list("pk", "score")
    expected = best_first([*meaning.all(), *fused.all()])
    combined = list(meaning.union(fused).order_by("-similarity", "pk"))
    assert [pk for pk, _ in combined] == [pk for pk, _ in expected]
    assert [value for _, value in combined] == pytest.approx([value for _, value in expected])


def test_a_values_search_can_be_read_again(corpora):
    """The sides' own annotations stay out of the caller's values() columns."""
    qs = hybrid(Doc.objects.all(), QUERY).values_list("pk", "score")
    first = list(qs)
    assert list(qs.all()) == first and list(qs[:2]) == first[:2]


def test_a_union_is_not_searched_again(corpora):
    union = Doc.objects.filter(corpus_id="a").union(Doc.objects.filter(corpus_id="b"))
    with pytest.raises(NotSupportedError, match=re.escape(COMBINED)):
        hybrid(union, QUERY)


@pytest.mark.parametrize("passages", [False, True], ids=["rows", "passages"])
def test_reverse_and_last_give_the_forward_order_reversed(corpora, passages):
    def search():
        return hybrid(Doc.objects.all(), QUERY, passages=passages)

    def shown(row):
        return (row.pk, row.score, row.keyword_rank, row.meaning_rank, getattr(row, "passage_text", None))

    forward = [shown(row) for row in search()]
    assert len(forward) == 11 and forward[0][1] > forward[-1][1]
    assert [shown(row) for row in search().reverse()] == forward[::-1]
    assert shown(search().last()) == forward[-1]
    assert shown(search().reverse().last()) == forward[0]


def test_each_side_keeps_its_candidates_so_at_most_twice_as_many_rows_return(corpora):
    qs = hybrid(Doc.objects.all(), QUERY, candidates=3)
    rows = list(qs)
    assert 3 <= len(rows) <= 6 and qs.count() == len(rows)
    assert qs.filter(keyword_rank__isnull=False).count() == 3
    assert qs.filter(meaning_rank__isnull=False).count() == 3


def test_by_default_a_hundred_rows_a_side(semantic_settings):
    """Past the candidates, matching rows are not returned: count() and pages stop there."""
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    with suspend_embedding():  # found by keywords only (weights below): no vector needed
        Doc.objects.bulk_create(Doc(title=f"Shoe {i}", text="A zyxquartz running shoe.") for i in range(130))
    assert DEFAULT_CANDIDATES == 100
    keywords_only = hybrid(Doc.objects.all(), "zyxquartz shoe", weights=(1.0, 0.0))
    assert keywords_only.count() == 100 and len(list(keywords_only)) == 100
    assert hybrid(Doc.objects.all(), "zyxquartz shoe", weights=(1.0, 0.0), candidates=130).count() == 130


def test_the_readme_states_the_bound():
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert f"Each side keeps only its `candidates` best rows (default {DEFAULT_CANDIDATES}, at most 1,000" in readme
    assert "returns at most twice that many" in readme
    assert "every row matching any word is ranked" not in readme
