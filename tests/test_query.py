"""similar_to, duplicates and friends, on real PostgreSQL with vectors from the fake
Gemini server (hashed bag of words: texts sharing words are near each other)."""

import contextlib
import pickle
import re
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.core.exceptions import SynchronousOnlyOperation
from django.core.paginator import Paginator
from django.db import NotSupportedError, connection, connections, models, transaction
from django.db.models.expressions import RawSQL
from django.db.models.sql import Query
from django.db.models.sql.compiler import SQLCompiler
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.translation import gettext_lazy

from semantic import (
    EmptyQuery,
    SearchUnavailable,
    SemanticQuerySetMixin,
    ahybrid,
    context,
    embed,
    hybrid,
    suspend_embedding,
)
from semantic.backends import CONFIG, EmbeddingError, get_backend
from semantic.classify import suggest_label
from semantic.keyword import keyword_search
from semantic.models import EmbeddingFailure, RateLimit
from semantic.query_vectors import query_task_type
from semantic.ratelimit import configuration_problem, limit_key
from semantic.registry import get_embedding_field
from semantic.search_arguments import COMBINED, SLICED
from tests.docsapp.models import Doc
from tests.fake_gemini import BAD_KEY, PERMISSION_DENIED, api_error
from tests.slow_statements import SLOW_ROWS
from tests.testapp.models import Article, Document, LongRead, Note, Review
from tests.topicapp.models import Ticket

pytestmark = pytest.mark.django_db(transaction=True)

TITLES = [
    "reset my account password",
    "reset the password of my account",
    "export invoices as csv",
    "export all invoices to csv",
    "mobile app crashes on start",
    "dark mode for the dashboard",
]


@pytest.fixture
def articles(fake_gemini):
    cache.clear()
    Article.objects.bulk_create(
        Article(title=title, body="", category="billing" if "invoice" in title else "other") for title in TITLES
    )
    from semantic import embed_pending

    embed_pending()
    fake_gemini.reset()
    return {a.title: a for a in Article.objects.all()}


def titles(qs):
    return [a.title for a in qs]


def test_similar_to_text_orders_nearest_first(articles):
    results = list(Article.objects.similar_to("how do I reset my password")[:3])
    assert titles(results)[:2] == ["reset my account password", "reset the password of my account"]
    sims = [r.similarity for r in results]
    assert sims == sorted(sims, reverse=True)
    for r in results:
        assert r.similarity == pytest.approx(1 - r.distance)
        assert -1 <= r.similarity <= 1


def test_similar_to_an_instance_excludes_it(articles):
    source = articles["export invoices as csv"]
    results = list(Article.objects.similar_to(source)[:2])
    assert source not in results
    assert titles(results)[0] == "export all invoices to csv"


def test_similar_to_a_vector_matches_numpy(articles):
    rng = np.random.default_rng(1)
    query = rng.normal(size=128)
    results = list(Article.objects.similar_to(list(query)))
    vectors = {a.title: np.array(a.embedding) for a in Article.objects.all()}
    expected = sorted(
        vectors, key=lambda t: -(vectors[t] @ query) / (np.linalg.norm(vectors[t]) * np.linalg.norm(query))
    )
    assert titles(results) == expected
    top = results[0]
    v = vectors[top.title]
    assert top.similarity == pytest.approx(v @ query / (np.linalg.norm(v) * np.linalg.norm(query)), abs=1e-5)


def test_chains_with_filter_exclude_values_slicing_and_paginator(articles):
    qs = Article.objects.similar_to("export invoices").filter(category="billing")
    assert set(titles(qs)) == {"export invoices as csv", "export all invoices to csv"}
    assert (
        titles(Article.objects.similar_to("export invoices").exclude(category="billing"))[0] != "export invoices as csv"
    )
    for qs in (Article.objects.all(), Article.objects.filter(category="billing")):
        flat = list(qs.similar_to("export invoices").values_list("title", flat=True))
        assert flat == titles(qs.similar_to("export invoices")) and all(isinstance(t, str) for t in flat)
    values = list(Article.objects.similar_to("dark mode").values("title", "similarity")[:1])
    assert values[0]["title"] == "dark mode for the dashboard" and values[0]["similarity"] > 0.5
    page = Paginator(Article.objects.similar_to("reset password"), 4).page(2)
    assert len(page.object_list) == 2 and page.paginator.count == 6
    assert Article.objects.similar_to("reset password").count() == 6


def test_reverse_gives_the_farthest_first_filtered_or_not(articles):
    """A filtered search's rows are sorted again after the fetch (relaxed order): in reverse,
    farthest first, when the search was reversed."""
    for qs in (Article.objects.all(), Article.objects.exclude(category="billing")):
        nearest_first = qs.similar_to("export invoices")
        assert titles(nearest_first.reverse()) == titles(nearest_first)[::-1]
        assert nearest_first.last() == list(nearest_first)[-1]
        assert list(nearest_first.reverse().values("title")) == list(nearest_first.values("title"))[::-1]


def test_rows_at_the_same_distance_come_by_primary_key_and_pages_neither_repeat_nor_skip(fake_gemini):
    """Duplicates are at the same distance from any query. Ordered by distance alone, their
    order was whatever the plan gave (here a sort of rows stored in the opposite order to
    their keys), and a page boundary among them could repeat one row and skip another."""
    from semantic import embed_pending

    cache.clear()
    twins = Article.objects.bulk_create(Article(title="the same words", body="") for _ in range(25))
    Article.objects.create(title="other words entirely", body="")
    embed_pending()
    for twin in reversed(twins):  # each update stores the row anew, at the end of the table
        Article.objects.filter(pk=twin.pk).update(category="twin")
    keys = sorted(twin.pk for twin in twins)
    found = Article.objects.similar_to("the same words")
    assert [row.pk for row in found][:25] == keys
    pages = Paginator(found, 10)
    assert [row.pk for number in pages.page_range for row in pages.page(number)][:25] == keys
    assert [row["pk"] for row in found.values("pk", "distance")[:25]] == keys


def test_rows_get_their_similarity_from_the_distance_the_search_already_computed(articles):
    """PostgreSQL computes the select list before sorting, so a similarity column would
    be a second distance for every row compared; model instances get it after the fetch."""
    Article.objects.similar_to("export invoices")  # embeds now: only the search is captured
    with CaptureQueriesContext(connection) as captured:
        rows = list(Article.objects.filter(category="billing").similar_to("export invoices"))
    (sql,) = [query["sql"] for query in captured.captured_queries]
    assert sql.count("<=>") == 1 and '"similarity"' not in sql
    assert rows and all(row.similarity == 1.0 - row.distance for row in rows)
    # Asked for by name, it is SQL as before: the same values.
    named = Article.objects.filter(category="billing").similar_to("export invoices").values_list("pk", "similarity")
    assert dict(named) == {row.pk: row.similarity for row in rows}
    best = (
        Article.objects.similar_to("export invoices").filter(similarity__gte=rows[0].similarity).order_by("-similarity")
    )
    assert [row.pk for row in best] == [rows[0].pk]
    assert "similarity" in str(Article.objects.similar_to("export invoices").query)  # the query itself is unchanged


def test_two_searches_in_a_union_are_ordered_by_similarity(articles):
    """The best rows of two searches in one list (a text and its spelling-corrected form)."""
    one = Article.objects.similar_to("reset password")[:2]
    other = Article.objects.similar_to("export csv")[:2]
    expected = sorted([*one, *other], key=lambda row: (-row.similarity, row.pk))
    merged = list(one.union(other).order_by("-similarity", "pk"))
    assert [(row.pk, row.similarity) for row in merged] == [(row.pk, row.similarity) for row in expected]
    assert [row.pk for row in one.union(other).order_by("-similarity", "pk")[:1]] == [expected[0].pk]


@pytest.mark.parametrize("combine", ["union", "intersection", "difference"])
def test_a_union_is_refused_with_the_recipe_before_the_text_is_embedded(articles, fake_gemini, combine):
    """Django never compiles a union's own filters: searching one failed with an IndexError deep
    in Django, after the query's text had been sent to the API."""
    billing, other = Article.objects.filter(category="billing"), Article.objects.exclude(category="billing")
    combined = getattr(billing, combine)(other)
    sent = fake_gemini.request_count
    for method, search in (
        ("similar_to", lambda: combined.similar_to("export invoices")),
        ("with_passage", lambda: combined.with_passage("export invoices")),
        ("duplicates", lambda: combined.duplicates()),
    ):
        with pytest.raises(NotSupportedError, match=re.escape(COMBINED.format(method=method))):
            search()
    assert fake_gemini.request_count == sent
    text = "export invoices"
    searched = billing.similar_to(text).union(other.similar_to(text)).order_by("distance", "pk")
    assert [row.pk for row in searched] == [row.pk for row in Article.objects.similar_to(text)]


def test_a_search_or_ed_with_a_row_without_a_vector_gives_it_no_similarity(articles):
    """Search results plus a pinned row just saved: it has no vector yet, so no distance."""
    with suspend_embedding():
        pinned = Article.objects.create(title="pinned announcement")
    rows = list(Article.objects.similar_to("reset password", min_similarity=0.5) | Article.objects.filter(pk=pinned.pk))
    assert rows[-1].pk == pinned.pk and rows[-1].distance is None and rows[-1].similarity is None
    assert all(row.similarity == 1.0 - row.distance for row in rows[:-1]) and len(rows) > 1
    # Filtered further, the rows are sorted again after the fetch (relaxed order): it stays last.
    pinned_too = Article.objects.similar_to("reset password", min_similarity=0.5) | Article.objects.filter(pk=pinned.pk)
    filtered = pinned_too.exclude(title="w").exclude(title="x").exclude(title="y").exclude(title="z")
    assert [row.pk for row in filtered] == [row.pk for row in rows]


def test_a_lazy_translated_text_is_searched_as_text_and_other_things_are_refused(articles):
    lazy = gettext_lazy("reset my account password")
    assert [row.pk for row in Article.objects.similar_to(lazy)] == [
        row.pk for row in Article.objects.similar_to("reset my account password")
    ]
    assert titles(Article.objects.duplicates_of(lazy, 0.9)) == ["reset my account password"]
    for bad in (b"reset password", {"a": 1.0}, Article.objects.all()):
        with pytest.raises(TypeError, match=f"takes a text, a Article or a vector, not {type(bad).__name__}"):
            Article.objects.similar_to(bad)


def test_min_similarity_filters_at_the_boundary(articles):
    best, second = Article.objects.similar_to("export invoices as csv")[:2]
    assert best.similarity == pytest.approx(1.0, abs=1e-6)
    at = Article.objects.similar_to("export invoices as csv", min_similarity=second.similarity - 1e-9)
    above = Article.objects.similar_to("export invoices as csv", min_similarity=second.similarity + 1e-6)
    assert titles(at) == [best.title, second.title]
    assert titles(above) == [best.title]


def test_rows_without_embedding_or_from_another_model_are_skipped(articles, semantic_settings):
    with suspend_embedding():
        Article.objects.create(title="reset my account password too", body="")
    assert "reset my account password too" not in titles(Article.objects.similar_to("reset password"))
    Article.objects.filter(title="dark mode for the dashboard").update(
        embedding_spec="gemini:old-model|SEMANTIC_SIMILARITY|128"
    )
    assert "dark mode for the dashboard" not in titles(Article.objects.similar_to("dark mode"))
    semantic_settings(MODEL="another-model")
    assert list(Article.objects.similar_to([1.0] * 128)) == []


def test_repeated_search_is_served_from_the_cache(articles, fake_gemini):
    list(Article.objects.similar_to("reset my password please"))
    assert fake_gemini.request_count == 1
    list(Article.objects.similar_to("reset my password please"))
    assert fake_gemini.request_count == 1
    list(Article.objects.similar_to("something else"))
    assert fake_gemini.request_count == 2


def test_retrieval_fields_search_with_the_query_task_type(fake_gemini):
    cache.clear()
    Document.objects.create(title="Invoices", text="Exporting invoices to CSV")
    fake_gemini.reset()
    list(Document.objects.similar_to("how to export invoices", field="content"))
    (item,) = fake_gemini.requests[0]["body"]["requests"]
    assert item["taskType"] == "RETRIEVAL_QUERY"
    list(Document.objects.similar_to("invoices can be exported", field="content", task_type="FACT_VERIFICATION"))
    assert fake_gemini.requests[1]["body"]["requests"][0]["taskType"] == "FACT_VERIFICATION"
    with pytest.raises(ValueError, match="does not search"):
        Document.objects.similar_to("x", field="summary", task_type="RETRIEVAL_QUERY")
    field = get_embedding_field(Document, "summary")
    assert query_task_type(field) == "SEMANTIC_SIMILARITY"


def test_halfvec_field_is_searchable(fake_gemini):
    cache.clear()
    Document.objects.create(title="Invoices", text="Exporting invoices to CSV")
    Document.objects.create(title="Passwords", text="Resetting a password")
    assert Document.objects.similar_to("resetting password", field="content").first().title == "Passwords"


def test_bad_arguments_are_clear(articles):
    with pytest.raises(ValueError, match="no EmbeddingField named 'nope'"):
        Article.objects.similar_to("x", field="nope")
    with pytest.raises(ValueError, match="has 3 dimensions; testapp.Article.embedding stores 128"):
        Article.objects.similar_to([1.0, 2.0, 3.0])
    for bad in (1.5, -2, "high", True):
        with pytest.raises(ValueError, match="from -1 to 1"):
            Article.objects.duplicates(bad)
        with pytest.raises(ValueError, match="from -1 to 1"):
            Article.objects.similar_to("x", min_similarity=bad)
    with pytest.raises(ValueError, match="several EmbeddingFields"):
        Document.objects.similar_to("x")
    with pytest.raises(TypeError, match="takes a text"):
        Article.objects.similar_to(42)
    with pytest.raises(TypeError, match="got a Note"):
        Article.objects.similar_to(Note(text="x"))
    with pytest.raises(ValueError, match="empty text"):
        Article.objects.similar_to("   ")
    from semantic.query import SemanticQuerySet

    with pytest.raises(ValueError, match="has no EmbeddingField"):
        SemanticQuerySet(EmbeddingFailure).similar_to("x")


def test_instance_without_embedding_is_searched_by_its_text(articles, fake_gemini):
    with suspend_embedding():
        article = Article.objects.create(title="reset the password", body="")
    fake_gemini.reset()
    results = titles(Article.objects.similar_to(article)[:2])
    assert set(results) == {"reset my account password", "reset the password of my account"}
    assert fake_gemini.texts() == ["reset the password"]
    with suspend_embedding():
        empty = Article.objects.create(title="", body="")
    with pytest.raises(EmptyQuery, match="no text to search with"):
        Article.objects.similar_to(empty)


def test_instance_with_a_vector_from_another_model_is_searched_by_its_text(articles, fake_gemini):
    """Its stored vector (here: the one of "dark mode…") is never compared with current ones."""
    source = articles["export invoices as csv"]
    misleading = Article.objects.get(title="dark mode for the dashboard").embedding
    Article.objects.filter(pk=source.pk).update(
        embedding=misleading, embedding_spec="gemini:old-model|SEMANTIC_SIMILARITY|128"
    )
    fake_gemini.reset()
    assert titles(Article.objects.similar_to(source)[:1]) == ["export all invoices to csv"]
    assert fake_gemini.texts() == ["export invoices as csv"]


def test_instance_whose_text_changed_is_searched_by_its_new_text(articles, fake_gemini):
    """A pending row keeps the vector of its old text until the worker catches up."""
    source = articles["export invoices as csv"]
    Article.objects.filter(pk=source.pk).update(title="reset the password of my account please")
    changed = Article.objects.get(pk=source.pk)
    assert Article.objects.filter(get_embedding_field(Article).pending(), pk=source.pk).exists()
    assert titles(Article.objects.similar_to(changed)[:1]) == ["reset the password of my account"]
    edited = articles["dark mode for the dashboard"]
    edited.title = "export all invoices to csv now"  # changed in memory, not saved
    assert titles(Article.objects.similar_to(edited)[:1]) == ["export all invoices to csv"]
    current = articles["mobile app crashes on start"]
    fake_gemini.reset()
    list(Article.objects.similar_to(current)[:1])
    assert fake_gemini.request_count == 0  # a current vector is used as stored


@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_duplicate_search_the_statement_timeout_cancels_says_so_and_what_to_do(
    articles, statement_timeout_2s, in_transaction
):
    from django.db import OperationalError

    from semantic.duplicates import QUERY_CANCELED, SEARCH_CANCELED, DuplicateSearchCanceled
    from semantic.operations import sqlstate

    slow = Article.objects.filter(pk__gte=SLOW_ROWS)
    with transaction.atomic() if in_transaction else contextlib.nullcontext():
        with pytest.raises(DuplicateSearchCanceled) as info:
            slow.duplicates(0.5)
        assert Article.objects.count() == len(articles)  # the caller's transaction goes on
    assert str(info.value) == SEARCH_CANCELED.format(label="testapp.Article", timeout="2s")
    assert info.value.timeout == "2s"
    assert isinstance(info.value, OperationalError)  # what callers caught before
    assert isinstance(info.value.__cause__, OperationalError) and sqlstate(info.value.__cause__) == QUERY_CANCELED
    assert "statement timeout" in str(info.value.__cause__)
    copied = pickle.loads(pickle.dumps(info.value))  # as task queues and multiprocessing pass errors on
    assert type(copied) is DuplicateSearchCanceled
    assert (str(copied), copied.timeout) == (str(info.value), "2s")


def test_a_statement_cancelled_without_a_statement_timeout_keeps_its_own_error(articles):
    """Someone's pg_cancel_backend(), not a time-out: nothing to say about statement_timeout."""
    import psycopg
    from django.db import OperationalError

    from semantic.duplicates import DuplicateSearchCanceled

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    cancelled, finished = threading.Event(), threading.Event()

    def cancel_once_sleeping():
        # Bounded: a search that never sleeps on this connection must fail the test, not hang it.
        deadline = time.monotonic() + 20
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
            while not finished.is_set() and time.monotonic() < deadline:
                if other.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'",
                    [pid],
                ).fetchone():
                    cancelled.set()
                    return
                time.sleep(0.01)

    canceller = threading.Thread(target=cancel_once_sleeping)
    canceller.start()
    error = None
    try:
        Article.objects.filter(pk__gte=SLOW_ROWS).duplicates(0.5, workers=1)  # on this connection
    except OperationalError as exc:
        error = exc
    finally:
        finished.set()
        canceller.join(timeout=10)
    assert not canceller.is_alive()
    assert cancelled.is_set(), "the canceller never saw the search sleeping on the test's connection"
    assert error is not None and not isinstance(error, DuplicateSearchCanceled)
    assert "canceling statement due to user request" in str(error)


def test_duplicates_pairs_and_groups(articles):
    pairs = Article.objects.duplicates(0.5)
    named = {(a.title, b.title) for a, b, _ in pairs}
    assert ("reset my account password", "reset the password of my account") in named or (
        "reset the password of my account",
        "reset my account password",
    ) in named
    for a, b, similarity in pairs:
        assert a.pk < b.pk and similarity >= 0.5
    assert len({(a.pk, b.pk) for a, b, _ in pairs}) == len(pairs)
    groups = Article.objects.duplicate_groups(0.5)
    assert {frozenset(a.title for a in g) for g in groups} >= {
        frozenset({"reset my account password", "reset the password of my account"}),
        frozenset({"export invoices as csv", "export all invoices to csv"}),
    }


def test_duplicates_respect_filters_and_threshold(articles):
    billing = Article.objects.filter(category="billing").duplicates(0.5)
    assert {(a.title, b.title) for a, b, _ in billing} <= {
        ("export invoices as csv", "export all invoices to csv"),
        ("export all invoices to csv", "export invoices as csv"),
    }
    assert len(billing) == 1
    sim = billing[0][2]
    assert len(Article.objects.filter(category="billing").duplicates(sim - 1e-6)) == 1
    assert Article.objects.filter(category="billing").duplicates(min(1.0, sim + 1e-4)) == []


def test_duplicates_of_before_creating(articles):
    found = list(Article.objects.duplicates_of("reset my account password", 0.9))
    assert titles(found) == ["reset my account password"]
    assert list(Article.objects.duplicates_of("completely unrelated words here", 0.9)) == []
    same = articles["export invoices as csv"]
    assert titles(Article.objects.duplicates_of(same, 0.5)) == ["export all invoices to csv"]


def test_a_sliced_queryset_is_not_searched(articles, fake_gemini):
    """The slice is "these rows": searching it would rank the whole table; refused as
    Django refuses filter() after a slice, before the text is embedded."""
    newest = Article.objects.order_by("-pk")[:3]
    for search in (lambda: newest.similar_to("reset password"), lambda: newest.duplicates_of("reset password")):
        with pytest.raises(TypeError, match=re.escape(SLICED)):
            search()
    assert fake_gemini.requests == []
    django_says = "Cannot filter a query once a slice has been taken."
    assert SLICED.startswith(django_says)
    with pytest.raises(TypeError, match=re.escape(django_says)):
        newest.duplicates()


def test_embed_returns_vectors_and_caches(fake_gemini):
    cache.clear()
    first = embed(["alpha beta", "gamma"], dimensions=256)
    assert [len(v) for v in first] == [256, 256]
    assert embed(["alpha beta"], dimensions=256) == first[:1]
    assert fake_gemini.request_count == 1
    with pytest.raises(TypeError, match="list of texts"):
        embed("alpha")


def test_hnsw_index_serves_unfiltered_queries_and_settings_stay_local(articles):
    with connection.cursor() as cursor:
        # On six rows a scan is cheaper; forbid the alternatives to see the index can serve the order.
        cursor.execute("SET enable_seqscan = off; SET enable_sort = off")
        try:
            plan = Article.objects.similar_to([1.0] * 128)[:5].explain()
        finally:
            cursor.execute("RESET enable_seqscan; RESET enable_sort")
    assert "article_embedding_hnsw" in plan
    with transaction.atomic(), connection.cursor() as cursor:  # SET LOCAL would outlive the query here
        list(Article.objects.similar_to([1.0] * 128, ef_search=77)[:5])
        cursor.execute("SELECT current_setting('hnsw.ef_search', true)")
        assert cursor.fetchone()[0] in (None, "40")


def ranked(rows):
    pairs = [(round(row.distance, 6), row.title) for row in rows]
    assert [d for d, _ in pairs] == sorted(d for d, _ in pairs)
    return sorted(pairs)


#: The index settings in effect while a search statement runs, as the statement itself reads them.
SEEN = RawSQL(
    "concat_ws(' ', current_setting('enable_indexscan'), current_setting('hnsw.iterative_scan'),"
    " current_setting('hnsw.ef_search'))",
    [],
)
DEFAULTS = ("40", "off", "20000", "on")


def seen(qs):
    return {row.seen for row in qs.annotate(seen=SEEN)}


def test_filtered_queries_choose_exact_or_iterative_search_in_one_statement(articles, semantic_settings):
    Article.objects.similar_to("export invoices")  # embeds now: only the search's own queries are counted below
    with CaptureQueriesContext(connection) as selective:
        exact = ranked(Article.objects.filter(category="other").similar_to("export invoices"))
    assert len(selective.captured_queries) == 1  # no count before it, no settings apart from it
    # Few rows pass: no index scan, so every filtered row is compared (exact).
    assert seen(Article.objects.filter(category="other").similar_to("export invoices")) == {"off off 40"}
    assert current_settings() == DEFAULTS  # in autocommit the settings ended with the statement

    semantic_settings(EXACT_SEARCH_MAX_ROWS=0)  # every filter counts as broad now
    with CaptureQueriesContext(connection) as broad:
        # Same rows at the same distances (rows at equal distance may come in any order).
        assert ranked(Article.objects.filter(category="other").similar_to("export invoices")) == exact
    assert len(broad.captured_queries) == 1
    assert seen(Article.objects.filter(category="other").similar_to("export invoices")) == {"on relaxed_order 100"}
    assert current_settings() == DEFAULTS

    with CaptureQueriesContext(connection) as unfiltered:
        assert seen(Article.objects.similar_to("export invoices", ef_search=64)[:3]) == {"on off 64"}
    assert len(unfiltered.captured_queries) == 1

    with CaptureQueriesContext(connection) as shallow:
        assert seen(Article.objects.similar_to("export invoices")[:40]) == {"on off 40"}  # a large table: the index
    assert len(shallow.captured_queries) == 1
    with CaptureQueriesContext(connection) as deep:
        assert seen(Article.objects.similar_to("export invoices")[:41]) == {"on strict_order 40"}
    assert len(deep.captured_queries) == 1
    assert current_settings() == DEFAULTS


def test_explain_shows_the_plan_with_the_settings_the_search_runs_with(articles, semantic_settings):
    """QuerySet.explain() of a filtered search: the exact search it runs, not an index scan it never does."""
    vector = [1.0] * 128
    plan = Article.objects.filter(category="other").similar_to(vector)[:20].explain(settings=True)
    assert "enable_indexscan = 'off'" in plan
    assert "article_embedding_hnsw" not in plan
    assert current_settings() == DEFAULTS
    assert "enable_indexscan" not in Article.objects.filter(category="other")[:20].explain(settings=True)


def test_a_selective_filter_finds_the_true_nearest_rows(many_articles, semantic_settings):
    """1% of the rows pass the filter: the search compares them all and returns their
    true nearest, in order, in one statement. The choice follows the planner's estimate
    of the rows the filter keeps."""
    semantic_settings(EXACT_SEARCH_MAX_ROWS=100)
    kept = [f"row {i}" for i in range(0, 2000, 100)]
    Article.objects.filter(title__in=kept).update(category="kept")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_article")
    query = [1.0] * 8 + [0.0] * 120
    with CaptureQueriesContext(connection) as queries:
        found = titles(Article.objects.filter(category="kept").similar_to(query)[:10])
    assert found == exact_order({title: many_articles[title] for title in kept}, query)[:10]
    assert len(queries.captured_queries) == 1
    assert seen(Article.objects.filter(category="kept").similar_to(query)[:10]) == {"off off 40"}
    # About 2,000 rows are estimated to pass this one: the iterative scan.
    assert seen(Article.objects.filter(category="many").similar_to(query)[:10]) == {"on relaxed_order 100"}


def test_a_broad_filter_scans_in_relaxed_order_and_returns_rows_nearest_first(fake_gemini, semantic_settings):
    """Half the rows pass: pgvector's iterative scan in relaxed order (about three times
    faster than strict order at the same recall) returns its rows a little out of order;
    similar_to() sorts the rows it fetched by their distance. A ``values_list()``, which
    carries no distance to sort by, keeps the strict order."""
    semantic_settings(EXACT_SEARCH_MAX_ROWS=100)
    # Random in all 128 dimensions: the graph's search is approximate, as on real vectors.
    vectors = np.random.default_rng(11).normal(size=(2000, 128))
    with suspend_embedding():
        Article.objects.bulk_create(
            Article(title=f"row {i}", body="", category="half" if i % 2 else "other", embedding=v.tolist())
            for i, v in enumerate(vectors)
        )
    field = get_embedding_field(Article)
    Article.objects.update(embedding_embedded_hash=field.stored_text_hash(), embedding_spec=field.spec())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_article")
    half = {f"row {i}": v for i, v in enumerate(vectors) if i % 2}
    # On 2,000 rows a scan and a sort are cheaper: forbid them, so the searches go through HNSW.
    forbid = "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off"

    def scanned(query: list[float]) -> list[float]:
        """The same scan written by hand, as it comes: the disorder the sort undoes."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(forbid)
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL hnsw.ef_search = 100")
            cursor.execute(
                "SELECT embedding::vector(128) <=> %s::vector(128) FROM testapp_article "
                "WHERE category = 'half' AND vector_dims(embedding) = 128 "
                "ORDER BY embedding::vector(128) <=> %s::vector(128) LIMIT 300",
                [query, query],
            )
            return [distance for (distance,) in cursor.fetchall()]

    # A query whose scan comes out of order. PostgreSQL builds the HNSW graph with random levels,
    # so for one query the relaxed scan may come out sorted by chance (it did, once in CI): the
    # first of several that does not.
    queries = (np.random.default_rng(seed).normal(size=128).tolist() for seed in range(12, 32))
    query = next((q for q in queries if (found := scanned(q)) != sorted(found)), None)
    assert query is not None, "20 relaxed-order scans all came out sorted"

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(forbid)
        rows = list(Article.objects.filter(category="half").similar_to(query)[:300])
    assert [row.distance for row in rows] == sorted(row.distance for row in rows)
    assert len(rows) == 300
    expected = exact_order(half, query)[:300]
    assert len(set(titles(rows)) & set(expected)) >= 0.9 * 300
    assert seen(Article.objects.filter(category="half").similar_to(query)[:300]) == {"on relaxed_order 100"}
    values = list(Article.objects.filter(category="half").similar_to(query).values("title", "distance")[:300])
    assert [row["distance"] for row in values] == sorted(row["distance"] for row in values)
    flat = Article.objects.filter(category="half").similar_to(query).annotate(seen=SEEN).values_list("seen", flat=True)
    assert set(flat[:300]) == {"on strict_order 200"}


def current_settings():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('hnsw.ef_search', true), current_setting('hnsw.iterative_scan', true),"
            " current_setting('hnsw.max_scan_tuples', true), current_setting('enable_indexscan')"
        )
        return cursor.fetchone()


def test_index_settings_are_put_back_inside_the_callers_transaction(articles, semantic_settings):
    """In autocommit the settings end with their own transaction anyway; inside the
    caller's transaction only the restoring code puts them back."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL hnsw.ef_search = 33")
        before = current_settings()
        assert seen(Article.objects.similar_to([1.0] * 128, ef_search=77)[:5]) == {"off off 33"}  # a small table
        assert current_settings() == before
        semantic_settings(EXACT_SEARCH_MAX_ROWS=0)
        assert seen(Article.objects.similar_to([1.0] * 128, ef_search=77)[:5]) == {"on off 77"}
        assert current_settings() == before
        semantic_settings(EXACT_SEARCH_MAX_ROWS=20_000)
        with CaptureQueriesContext(connection) as queries:
            assert seen(Article.objects.filter(category="other").similar_to([1.0] * 128)[:5]) == {"off off 33"}
        assert current_settings() == before
        semantic_settings(EXACT_SEARCH_MAX_ROWS=0)
        assert seen(Article.objects.filter(category="other").similar_to([1.0] * 128)[:5]) == {"on relaxed_order 100"}
        assert current_settings() == before
        list(Article.objects.similar_to([1.0] * 128).iterator())
        assert current_settings() == before
    assert before[0] == "33"
    assert len(queries.captured_queries) == 1  # saved, estimated, set, searched, put back: one round trip


@pytest.fixture
def server_side_binding():
    """The default connection binding parameters on the server (``OPTIONS``), for one test."""
    options = connection.settings_dict["OPTIONS"]
    connection.close()
    options["server_side_binding"] = True
    connection.features.__dict__.pop("uses_server_side_binding", None)
    yield
    connection.close()
    del options["server_side_binding"]
    connection.features.__dict__.pop("uses_server_side_binding", None)


def test_with_server_side_binding_the_settings_are_sent_apart(articles, semantic_settings, server_side_binding):
    """A prepared statement holds one command: the same settings, sent before and after the query."""
    assert connection.features.uses_server_side_binding
    plain = ranked(Article.objects.filter(category="other").similar_to("export invoices"))
    assert seen(Article.objects.filter(category="other").similar_to("export invoices")) == {"off off 40"}
    assert current_settings() == DEFAULTS
    semantic_settings(EXACT_SEARCH_MAX_ROWS=0)
    assert ranked(Article.objects.filter(category="other").similar_to("export invoices")) == plain
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL hnsw.ef_search = 33")
        before = current_settings()
        assert seen(Article.objects.filter(category="other").similar_to("export invoices")) == {"on relaxed_order 100"}
        assert current_settings() == before
    assert current_settings() == DEFAULTS


def test_duplicates_split_over_several_connections_find_the_same_pairs(articles):
    one = [(a.pk, b.pk, round(s, 6)) for a, b, s in Article.objects.duplicates(0.3, workers=1)]
    three = [(a.pk, b.pk, round(s, 6)) for a, b, s in Article.objects.duplicates(0.3, workers=3)]
    assert one == three and len(one) >= 2


class LibraryCompiler(SQLCompiler):
    """Another library's compiler (as django-cte or django-model-utils bring): it marks its SQL."""

    def as_sql(self, *args, **kwargs):
        sql, params = super().as_sql(*args, **kwargs)
        return f"/* library */ {sql}", params


class LibraryQuery(Query):
    """Another library's own Query class, which picks its own compiler."""

    def get_compiler(self, using=None, connection=None, elide_empty=True):
        if connection is None:
            connection = connections[using]
        return LibraryCompiler(self, connection, using, elide_empty)


class LibraryQuerySet(models.QuerySet):
    """A QuerySet from another library, with its own Query and a method of its own."""

    def __init__(self, model=None, query=None, using=None, hints=None):
        super().__init__(model, query or LibraryQuery(model), using, hints)

    def billing(self):
        return self.filter(category="billing")


class LibraryManager(models.Manager):
    pass


ComposedQuerySet = type("ComposedQuerySet", (SemanticQuerySetMixin, LibraryQuerySet), {})
LibraryManager.from_queryset(ComposedQuerySet)().contribute_to_class(Article, "composed")


def test_mixin_composes_with_another_librarys_queryset_and_query(articles, semantic_settings):
    plain = titles(Article.objects.similar_to("export invoices"))
    with CaptureQueriesContext(connection) as unfiltered:
        composed = Article.composed.similar_to("export invoices")
        assert titles(composed) == plain
    sql = " ".join(q["sql"] for q in unfiltered.captured_queries)
    assert "/* library */" in sql and "hnsw.iterative_scan" in sql
    assert isinstance(composed.query, LibraryQuery)

    with CaptureQueriesContext(connection) as selective:
        found = titles(Article.composed.billing().similar_to("export invoices"))
    assert set(found) == {"export invoices as csv", "export all invoices to csv"}
    assert "/* library */" in selective.captured_queries[-1]["sql"]
    assert seen(Article.composed.billing().similar_to("export invoices")) == {"off off 40"}  # few: exact search

    semantic_settings(EXACT_SEARCH_MAX_ROWS=0)
    with CaptureQueriesContext(connection) as broad:
        assert titles(Article.composed.similar_to("export invoices").billing()) == found
    assert "/* library */" in broad.captured_queries[-1]["sql"]
    assert seen(Article.composed.similar_to("export invoices").billing()) == {"on relaxed_order 100"}

    page = Paginator(Article.composed.similar_to("reset password"), 4).page(2)
    assert page.paginator.count == 6
    assert titles(page.object_list) == titles(Article.objects.similar_to("reset password"))[4:]
    assert [a.title for a in Article.composed.similar_to("reset password").iterator()][:4] == titles(
        Article.objects.similar_to("reset password")[:4]
    )


def test_semantic_queryset_and_manager_keep_their_paths():
    import semantic
    from semantic.query import SemanticManager, SemanticQuerySet

    assert semantic.SemanticQuerySetMixin is SemanticQuerySetMixin
    assert issubclass(SemanticQuerySet, SemanticQuerySetMixin) and issubclass(SemanticQuerySet, models.QuerySet)
    assert issubclass(SemanticManager._queryset_class, SemanticQuerySet)


@pytest.fixture
def many_articles(fake_gemini):
    """2,000 Articles with stored vectors (random in 8 of the 128 dimensions, so the
    HNSW index finds the true neighbours) and the index's statistics up to date."""
    rng = np.random.default_rng(7)
    vectors = np.zeros((2000, 128))
    vectors[:, :8] = rng.normal(size=(2000, 8))
    with suspend_embedding():
        Article.objects.bulk_create(
            Article(title=f"row {i}", body="", category="many", embedding=v.tolist()) for i, v in enumerate(vectors)
        )
    spec = get_embedding_field(Article).spec()
    Article.objects.update(embedding_embedded_hash=get_embedding_field(Article).stored_text_hash(), embedding_spec=spec)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_article")
    return {f"row {i}": v for i, v in enumerate(vectors)}


def exact_order(vectors, query):
    query = np.asarray(query)
    return sorted(vectors, key=lambda t: -(vectors[t] @ query) / np.linalg.norm(vectors[t]) / np.linalg.norm(query))


def test_deep_pages_of_an_unfiltered_search_are_full_and_in_order(many_articles, semantic_settings):
    semantic_settings(EXACT_SEARCH_MAX_ROWS=100)  # 2,000 rows is a large table: the index serves the pages
    query = [1.0] * 8 + [0.0] * 120
    expected = exact_order(many_articles, query)
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN SELECT id FROM testapp_article WHERE vector_dims(embedding) = 128 "
            "ORDER BY embedding::vector(128) <=> %s::vector(128) LIMIT 60",
            [query],
        )
        assert "article_embedding_hnsw" in " ".join(row[0] for row in cursor.fetchall())
    assert titles(Article.objects.similar_to(query)[40:60]) == expected[40:60]
    assert titles(Article.composed.similar_to(query)[100:120]) == expected[100:120]

    async def collect(qs):
        return [a.title async for a in qs.aiterator()]

    assert async_to_sync(collect)(Article.objects.similar_to(query)[60:80]) == expected[60:80]
    page = Paginator(Article.objects.similar_to(query), 20).page(3)
    assert titles(page.object_list) == expected[40:60]
    assert page.paginator.count == 2000


def test_an_unfiltered_search_of_a_small_table_is_exact_and_its_pages_hold_every_counted_row(many_articles):
    """The index scan is approximate at any size; on a table of at most EXACT_SEARCH_MAX_ROWS
    rows the search compares them all, so count() and a Paginator number the rows its pages show."""
    query = [1.0] * 8 + [0.0] * 120
    assert seen(Article.objects.similar_to(query)[:10]) == {"off off 40"}
    assert seen(Article.objects.similar_to(query, min_similarity=0.5)[:10]) == {"off off 40"}
    paginator = Paginator(Article.objects.similar_to(query, min_similarity=0.5), 100)
    shown = [row.title for number in paginator.page_range for row in paginator.page(number).object_list]
    expected = [t for t in exact_order(many_articles, query) if cosine(many_articles[t], query) >= 0.5]
    assert paginator.count == len(expected) == len(shown)
    assert shown == expected


def cosine(vector, query):
    return float(vector @ np.asarray(query) / np.linalg.norm(vector) / np.linalg.norm(query))


def test_a_query_with_nothing_to_embed_is_an_empty_query_error(articles, fake_gemini):
    for text in ("\x01", " \x01\x02\t", "   ", ""):
        with pytest.raises(EmptyQuery, match="empty text"):
            Article.objects.similar_to(text)
        with pytest.raises(EmptyQuery):
            Article.objects.duplicates_of(text)
        with pytest.raises(EmptyQuery):
            embed([text])
    assert issubclass(EmptyQuery, ValueError)
    assert fake_gemini.request_count == 0


#: Texts with nothing to search: whitespace of any script (U+3000 is what a CJK input
#: method types for a space), C0 and C1 controls, and characters nobody sees (zero-width
#: space and joiner, BOM, left-to-right and right-to-left marks, soft hyphen, word joiner).
BLANK_QUERIES = [
    "",
    " ",
    "\u3000",
    "\x01",
    " \x01\x02\t",
    "\u3000\n\t\u00a0\u2003",
    "\x85\x80\x9f\x7f",
    "\u200b",
    "\ufeff",
    "\u200e \u200f",
    "\u200b\u200d\ufeff\u00ad\u2060",
]

#: Every public way to search with a text.
QUERY_ENTRY_POINTS = {
    "similar_to": lambda text: Article.objects.similar_to(text),
    "duplicates_of": lambda text: Article.objects.duplicates_of(text),
    "with_passage": lambda text: LongRead.objects.all().with_passage(text),
    "context": lambda text: context(LongRead, text),
    "hybrid": lambda text: hybrid(Doc.objects.all(), text),
    "hybrid by keywords only": lambda text: hybrid(Doc.objects.all(), text, weights=(1, 0)),
    "keyword_search": lambda text: keyword_search(Doc.objects.all(), text),
    "suggest_label": lambda text: suggest_label(Ticket.objects.all(), text),
    "embed": lambda text: embed([text]),
}


@pytest.mark.parametrize("entry_point", QUERY_ENTRY_POINTS)
def test_every_search_refuses_a_blank_text_with_empty_query(entry_point, fake_gemini):
    """A view that catches EmptyQuery (as README says) never answers 500 for ?q=+ or ?q=%E3%80%80."""
    for text in BLANK_QUERIES:
        with pytest.raises(EmptyQuery, match="empty text"):
            QUERY_ENTRY_POINTS[entry_point](text)
    assert fake_gemini.request_count == 0


def test_an_instance_with_only_blank_text_is_an_empty_query(fake_gemini):
    with suspend_embedding():
        blank = Article.objects.create(title="\u3000", body="\x80\u2003")
    with pytest.raises(EmptyQuery, match="no text to search with"):
        Article.objects.similar_to(blank)
    assert fake_gemini.request_count == 0


def test_api_failure_at_query_time_is_search_unavailable(articles, fake_gemini, settings):
    fake_gemini.fail_next(
        500, times=3, body='{"error": {"code": 500, "message": "boom ' + settings.TEST_API_KEY + '"}}'
    )
    with pytest.raises(SearchUnavailable, match="Try again later") as failure:
        Article.objects.similar_to("reset my password")
    assert isinstance(failure.value, EmbeddingError)
    assert settings.TEST_API_KEY not in str(failure.value)
    with pytest.raises(SearchUnavailable):
        Article.objects.duplicates_of("export invoices as csv")
    fake_gemini.reset()
    assert titles(Article.objects.similar_to("reset my password"))[0] == "reset my account password"


def test_query_embedding_shares_the_rate_limit_and_never_waits(articles, fake_gemini, semantic_settings):
    RateLimit.objects.all().delete()  # the fixture's embedding counted in this window
    semantic_settings(REQUESTS_PER_MINUTE=1)
    list(Article.objects.similar_to("reset my password"))
    assert fake_gemini.request_count == 1
    with pytest.raises(SearchUnavailable, match=r"rate limit is reached. Try again in \d+ s") as busy:
        Article.objects.similar_to("export invoices please")
    assert 0 < busy.value.retry_after <= 60
    assert fake_gemini.request_count == 1
    assert titles(Article.objects.similar_to("reset my password"))[0] == "reset my account password"  # cached


def test_a_429_at_query_time_pauses_everyone_sharing_the_key(articles, fake_gemini):
    fake_gemini.fail_next(429, retry_after="120")
    with pytest.raises(SearchUnavailable, match="Try again later"):
        Article.objects.similar_to("reset my password")
    sent = fake_gemini.request_count
    state = RateLimit.objects.get()
    assert state.paused_until is not None and state.paused_until > timezone.now() + timedelta(seconds=100)
    with pytest.raises(SearchUnavailable, match="Try again in"):
        Article.objects.similar_to("export invoices please")
    assert fake_gemini.request_count == sent


@pytest.mark.parametrize("body", [BAD_KEY, PERMISSION_DENIED], ids=["400 API_KEY_INVALID", "403"])
def test_a_key_the_worker_saw_refused_is_what_a_search_says_not_a_rate_limit(articles, fake_gemini, body):
    """The worker pauses a refused key for a few minutes; a search must not read that
    pause as "busy, try again in 300 s" (waiting never fixes a key), but say what the
    worker says, with no retry_after a view would send as Retry-After."""
    fake_gemini.fail_every(400 if "API_KEY_INVALID" in body else 403, body=body)
    Article.objects.create(title="saved while the key is refused", body="")  # the worker meets the refusal
    problem = configuration_problem()
    assert "SEMANTIC['API_KEY']" in problem
    sent = fake_gemini.request_count
    with pytest.raises(SearchUnavailable) as refused:
        Article.objects.similar_to("reset my password")
    assert str(refused.value) == SearchUnavailable.CONFIGURATION.format(problem=problem)
    assert refused.value.kind == CONFIG and refused.value.retry_after is None
    with pytest.raises(SearchUnavailable) as waiting:  # a script willing to wait is told too, not left to wait
        embed(["reset my password"], wait=True)
    assert str(waiting.value) == str(refused.value)
    assert fake_gemini.request_count == sent  # the pause still keeps searches from the API


def test_a_key_refused_at_query_time_says_which_setting_to_fix(articles, fake_gemini):
    """Before any worker met it, the search's own request says the same."""
    fake_gemini.fail_every(400, body=BAD_KEY)
    with pytest.raises(SearchUnavailable) as refused:
        Article.objects.similar_to("reset my password")
    assert str(refused.value).startswith(SearchUnavailable.CONFIGURATION.format(problem="Gemini API error 400"))
    assert "SEMANTIC['API_KEY']" in str(refused.value) and "Try again" not in str(refused.value)
    assert refused.value.kind == CONFIG and refused.value.retry_after is None


@pytest.fixture
def hung_api(fake_gemini):
    """The API holds every request (at most 3 s, far beyond the tests' SEARCH_TIMEOUT and
    far within their TIMEOUT) until the test ends."""
    released = threading.Event()
    fake_gemini.on_request = lambda record: released.wait(timeout=3)
    yield fake_gemini
    released.set()


def test_a_search_waits_search_timeout_once_and_the_worker_still_waits_timeout(articles, hung_api, semantic_settings):
    """A search inside a web request must give up before the web server kills the
    request (gunicorn's and Heroku's 30 s, README's TIMEOUT): SEARCH_TIMEOUT, one
    request, no retry. The worker keeps its own TIMEOUT."""
    semantic_settings(TIMEOUT=30.0, SEARCH_TIMEOUT=0.2)
    with pytest.raises(SearchUnavailable) as hung:
        Article.objects.similar_to("a text the API never answers for")
    assert str(hung.value).startswith(SearchUnavailable.FAILED.split("{reason}")[0])
    assert "timed out" in str(hung.value)
    assert [r["timeout"] for r in hung_api.requests] == ["1"]  # 0.2 s, in the header's whole seconds

    hung_api.reset()  # answers again
    # A search that should succeed gets the default limit: 0.2 s is for a request never answered,
    # not a bet on how fast a busy machine answers one.
    semantic_settings(SEARCH_TIMEOUT=5.0)
    Article.objects.create(title="saved and embedded by the worker", body="")
    list(Article.objects.similar_to("a text never searched before"))
    assert [r["timeout"] for r in hung_api.requests] == ["30", "5"]


def store_vectors(vectors, category="planted"):
    """Articles holding ``vectors`` as current embeddings; returns their pks in order."""
    with suspend_embedding():
        created = Article.objects.bulk_create(
            Article(title=f"{category} {i}", body="", category=category, embedding=list(map(float, v)))
            for i, v in enumerate(vectors)
        )
    spec = get_embedding_field(Article).spec()
    Article.objects.filter(category=category).update(
        embedding_embedded_hash=get_embedding_field(Article).stored_text_hash(), embedding_spec=spec
    )
    return [a.pk for a in created]


def exact_pairs(pks, vectors, threshold):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ unit.T
    return {(pks[i], pks[j]) for i, j in zip(*np.nonzero(scores >= threshold)) if i < j}


def test_duplicates_find_every_pair_of_groups_of_ten(fake_gemini):
    """Each row of a group has nine near-duplicates, more than ``neighbours``: probing
    goes deeper until the farthest neighbour is no duplicate."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 128))
    groups = [centre + rng.normal(scale=0.08, size=(10, 128)) for centre in centres]
    vectors = np.vstack([*groups, rng.normal(size=(60, 128))])
    pks = store_vectors(vectors)
    expected = exact_pairs(pks, vectors, 0.9)
    assert len(expected) == 3 * 45
    found = {(a.pk, b.pk) for a, b, _ in Article.objects.duplicates(0.9)}
    assert found == expected
    assert {(a.pk, b.pk) for a, b, _ in Article.objects.duplicates(0.9, neighbours=1, workers=2)} == expected
    groups = Article.objects.duplicate_groups(0.9)
    assert [len(group) for group in groups] == [10, 10, 10]
    bounded = Article.objects.duplicates(0.9, neighbours=2, max_neighbours=4)
    assert found > {(a.pk, b.pk) for a, b, _ in bounded} and len(bounded) >= 3 * 10 * 4 // 2


def test_neighbours_counts_other_rows(fake_gemini):
    rng = np.random.default_rng(4)
    base = rng.normal(size=128)
    vectors = np.vstack([base, base + rng.normal(scale=0.05, size=128), rng.normal(size=(5, 128))])
    pks = store_vectors(vectors)
    assert [(a.pk, b.pk) for a, b, _ in Article.objects.duplicates(0.9, neighbours=1)] == [(pks[0], pks[1])]


def test_embed_can_wait_for_the_rate_limit_instead(fake_gemini):
    """A script embedding many texts waits out a shared pause rather than failing."""
    cache.clear()
    now = timezone.now()
    RateLimit.objects.create(key=limit_key(get_backend()), window_start=now, paused_until=now + timedelta(seconds=3))
    with pytest.raises(SearchUnavailable, match="Try again in"):
        embed(["alpha beta"], dimensions=128)
    assert len(embed(["alpha beta"], dimensions=128, wait=True)[0]) == 128
    assert fake_gemini.request_count == 1


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([float("nan")] + [0.1] * 127, "holds NaN or infinite values"),
        ([float("inf")] + [0.0] * 127, "holds NaN or infinite values"),
        ([0.0] * 128, "all zeros"),
    ],
)
def test_a_query_vector_postgresql_cannot_compare_is_refused_at_the_call(articles, vector, message):
    """Not later, as a DataError where the queryset is evaluated (or NaN for every row)."""
    with pytest.raises(ValueError, match=message):
        Article.objects.similar_to(vector)
    with pytest.raises(ValueError, match=message):
        Article.objects.similar_to(np.array(vector))


@pytest.mark.parametrize("values", ["NaN" + ", 0.1" * 127, ", ".join(["0.01"] * 3072)])
def test_an_unusable_query_vector_is_search_unavailable_and_never_cached(articles, fake_gemini, values):
    fake_gemini.bad_embeddings_next('{"values": [%s]}' % values, times=2)
    with pytest.raises(SearchUnavailable, match="Try again later"):
        Article.objects.similar_to("reset my password")
    with pytest.raises(SearchUnavailable):
        embed(["reset my password"], dimensions=128)
    sent = fake_gemini.request_count
    assert titles(Article.objects.similar_to("reset my password"))[0] == "reset my account password"
    assert fake_gemini.request_count == sent + 1  # asked again, not served a bad vector from the cache


def test_a_bad_vector_found_in_the_cache_is_asked_for_again(articles, fake_gemini):
    """Cached by a release that did not check; the cache key is the one embed() uses."""
    from semantic.vectors import _key

    backend = get_backend()
    cache.set(_key(backend.model_id, "SEMANTIC_SIMILARITY", 128, "reset my password"), [float("nan")] * 128)
    assert titles(Article.objects.similar_to("reset my password"))[0] == "reset my account password"
    assert fake_gemini.request_count == 1


def test_a_429_with_retry_info_only_pauses_everyone_for_the_delay_it_gives(articles, fake_gemini):
    """The Gemini API puts the wait in the body (RetryInfo.retryDelay), not in Retry-After."""
    body = api_error(429, "Quota exceeded.", "RESOURCE_EXHAUSTED", retry_delay="120s")
    fake_gemini.fail_next(429, body=body)
    with pytest.raises(SearchUnavailable) as busy:
        Article.objects.similar_to("reset my password")
    assert busy.value.retry_after == 120.0
    state = RateLimit.objects.get()
    assert state.paused_until is not None and state.paused_until > timezone.now() + timedelta(seconds=100)
    with pytest.raises(SearchUnavailable, match="Try again in"):
        Article.objects.similar_to("export invoices please")
    assert fake_gemini.request_count == 1


def test_async_code_searches_a_text_never_embedded(articles, fake_gemini):
    """In async code the text is embedded in a thread (the API, the rate limit and the
    cache are synchronous); the queryset is read with ``async for`` and ``afirst()``."""
    cache.clear()
    fake_gemini.reset()

    async def search():
        rows = await Article.objects.asimilar_to("how do I reset my password")
        first = await (await Article.objects.asimilar_to("export invoices")).afirst()
        found = await hybrid_rows()
        return [a.title async for a in rows[:2]], first.title, found

    async def hybrid_rows():
        return [a.title async for a in (await ahybrid(Article.objects.all(), "password", keyword_fields=["title"]))[:1]]

    titles_found, first, hybrid_found = async_to_sync(search)()
    assert titles_found == titles(Article.objects.similar_to("how do I reset my password")[:2])
    assert first == titles(Article.objects.similar_to("export invoices")[:1])[0]
    assert len(hybrid_found) == 1 and "password" in hybrid_found[0]
    assert fake_gemini.request_count == 3  # each text embedded once, then cached


def test_async_code_searches_an_instance_with_the_a_variants_and_a_vector_directly(articles, fake_gemini):
    """An instance query reads the row's stored vector when it is made, so in an event loop
    it needs asimilar_to() / aduplicates_of() even though nothing is embedded (README); a
    vector query reads nothing until it is read, unless the model has a field that
    replaces another (the switch is read)."""
    row = articles["reset my account password"]
    vector = [float(x) for x in Article.objects.values_list("embedding", flat=True).get(pk=row.pk)]

    async def search():
        for call in (lambda: Article.objects.similar_to(row), lambda: Article.objects.duplicates_of(row, 0.5)):
            with pytest.raises(SynchronousOnlyOperation):
                call()
        with pytest.raises(SynchronousOnlyOperation):
            Review.objects.similar_to([1.0] * 128)
        near = [a.title async for a in (await Article.objects.asimilar_to(row))[:1]]
        duplicates = [a.title async for a in await Article.objects.aduplicates_of(row, 0.5)]
        by_vector = [a.title async for a in Article.objects.similar_to(vector)[:2]]
        return near, duplicates, by_vector

    near, duplicates, by_vector = async_to_sync(search)()
    assert near == titles(Article.objects.similar_to(row)[:1]) == ["reset the password of my account"]
    assert duplicates == titles(Article.objects.duplicates_of(row, 0.5)) and duplicates
    assert by_vector == titles(Article.objects.similar_to(vector)[:2]) and by_vector[0] == row.title
    assert fake_gemini.request_count == 0
