"""Workers sharing one API key and one backlog: the shared rate limit, a shared 429 pause, row claims."""

import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from semantic import SearchUnavailable, embed_pending, ratelimit, suspend_embedding
from semantic.backends import get_backend
from semantic.models import EmbeddingFailure, RateLimit
from semantic.tasks import embed_chunk
from tests.commands import manage
from tests.testapp.models import Article, Document, Snippet

pytestmark = pytest.mark.django_db(transaction=True)


def rows(prefix, count):
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=f"{prefix} {i}") for i in range(count))
    return list(Article.objects.filter(title__startswith=prefix).values_list("pk", flat=True))


def worker(pks, results):
    try:
        results.append(embed_chunk("testapp.Article", "embedding", pks))
    finally:
        connections.close_all()


def test_a_429_pauses_every_worker_sharing_the_key(fake_gemini):
    first, second = rows("first worker", 3), rows("second worker", 3)
    fake_gemini.fail_next(429, retry_after="1")
    results = []
    a = threading.Thread(target=worker, args=(first, results))
    a.start()
    deadline = time.monotonic() + 10
    while not RateLimit.objects.filter(paused_until__isnull=False).exists():
        assert time.monotonic() < deadline, "the 429 was not shared"
        time.sleep(0.02)
    b = threading.Thread(target=worker, args=(second, results))
    b.start()
    a.join(30)
    b.join(30)
    rejected = fake_gemini.requests[0]
    later = fake_gemini.requests[1:]
    assert len(later) == 2 and all(r["time"] - rejected["time"] >= 0.95 for r in later)
    texts = {r["body"]["requests"][0]["content"]["parts"][0]["text"].split()[0] for r in later}
    assert texts == {"first", "second"}  # the second worker waited too, without a 429 of its own
    assert sum(r["embedded"] for r in results) == 6
    state = RateLimit.objects.get()
    assert settings.TEST_API_KEY not in state.key and state.key.startswith("gemini:")


class ManualClock(ratelimit.Clock):
    """Time that moves only when the rate limit waits: no real sleeping, no races with load."""

    def __init__(self):
        self.time = timezone.now()

    def now(self):
        return self.time

    def sleep(self, seconds):
        self.time += timedelta(seconds=seconds)


def windowed(fake_gemini, label, field_name, pks):
    """``embed_chunk()`` on a :class:`ManualClock`: its outcome, and the rate-limit window
    (whole minutes from the start) in which each request was sent."""
    clock = ManualClock()
    start = clock.now()
    sent_at = []
    fake_gemini.on_request = lambda record: sent_at.append(clock.now())
    with ratelimit.use_clock(clock):
        outcome = embed_chunk(label, field_name, pks)
    return outcome, [int((t - start).total_seconds() // 60) for t in sent_at]


def test_requests_per_window_are_capped(fake_gemini, semantic_settings):
    semantic_settings(REQUESTS_PER_MINUTE=2, RATE_LIMIT_WINDOW=60, BATCH_SIZE=1)
    pks = rows("limited", 5)
    outcome, windows = windowed(fake_gemini, "testapp.Article", "embedding", pks)
    assert outcome["embedded"] == 5
    assert Counter(windows) == {0: 2, 1: 2, 2: 1}


def test_tokens_per_window_are_capped(fake_gemini, semantic_settings):
    semantic_settings(TOKENS_PER_MINUTE=10, RATE_LIMIT_WINDOW=60, BATCH_SIZE=1)
    pks = rows("a title long enough to cost about ten tokens each time", 2)
    _, windows = windowed(fake_gemini, "testapp.Article", "embedding", pks)
    assert windows == [0, 1]


def waiting_on_the_pause():
    """How many other connections' last statement read whether the key is paused (ratelimit._paused)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
            "AND query LIKE %s",
            ['%"semantic_ratelimit"."paused_until" >%'],
        )
        return cursor.fetchone()[0]


def test_a_429_pauses_another_process_on_the_same_key(fake_gemini):
    """Two OS processes (two semantic_embed commands on different models) share one pause.

    The pause lasts until the test lifts it, once both processes wait on it: how fast the second
    one starts cannot decide whether it started inside the pause."""
    rows("process a", 3)
    with suspend_embedding():
        Snippet.objects.bulk_create(Snippet(escaped=f"process b {i}") for i in range(3))
    fake_gemini.fail_next(429, retry_after="600")

    def command(target):
        env = {"SEMANTIC_TEST_MAX_BACKOFF": "900"}  # wait out the Retry-After rather than give up
        return manage(fake_gemini, "semantic_embed", target, env=env, stderr=subprocess.STDOUT)

    children = []
    try:
        children.append(command("testapp.Article"))
        deadline = time.monotonic() + 30
        while not RateLimit.objects.filter(paused_until__isnull=False).exists():
            assert time.monotonic() < deadline, "the 429 was not shared"
            time.sleep(0.02)
        children.append(command("testapp.Snippet"))
        deadline = time.monotonic() + 60
        while waiting_on_the_pause() < 2:
            assert fake_gemini.request_count == 1, "a process sent during the pause"
            assert time.monotonic() < deadline, "the two processes did not both wait for the pause"
            time.sleep(0.02)
        assert fake_gemini.request_count == 1  # the 429: the second process found the pause and sent nothing
        lifted = time.monotonic()
        RateLimit.objects.update(paused_until=timezone.now())
        outputs = [p.communicate(timeout=60)[0] for p in children]
    finally:
        # A failed assertion above leaves them waiting out a 600 s pause, to embed the next tests' rows.
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    first, second = children
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    rejected, *later = fake_gemini.requests
    assert len(later) == 2
    assert all(r["time"] > lifted for r in later)  # neither sent before the pause ended
    assert "3 embedded" in outputs[0] and "3 embedded" in outputs[1]


def test_concurrent_workers_never_send_the_same_row_twice(fake_gemini, semantic_settings):
    """A sweep and a --queue chunk walking the same backlog at once share it out.

    The first request is answered only once the other worker has sent one (the first's worker
    waits for its answer, so that one is the other's): both take part however late either thread
    is scheduled, and TIMEOUT, raised here, only guards against a hang."""
    semantic_settings(BATCH_SIZE=10, TIMEOUT=60)
    pks = rows("shared backlog", 60)
    results = []
    other_sent = threading.Event()
    held = []

    def first_waits_for_the_other(record):
        if record is fake_gemini.requests[0]:
            held.append(other_sent.wait(timeout=30))
        else:
            other_sent.set()

    fake_gemini.on_request = first_waits_for_the_other

    def sweep():
        try:
            results.append(embed_pending("testapp.Article")["testapp.Article.embedding"])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweep), threading.Thread(target=worker, args=(pks, results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sent = fake_gemini.texts()
    assert sorted(sent) == sorted(f"shared backlog {i}" for i in range(60))  # each row once
    assert sum(r["embedded"] for r in results) == 60
    assert all(r["embedded"] for r in results), "both workers took part"
    assert held == [True]  # the other worker sent while the first's request was held
    assert not Article.objects.filter(embedding__isnull=True).exists()


def test_a_retry_after_longer_than_max_backoff_is_shared_and_delays_the_rows(fake_gemini, semantic_settings):
    """MAX_BACKOFF is 2 s in the tests: a 120 s Retry-After pauses every worker, and the
    batch that got it waits for the pause instead of failing for good."""
    semantic_settings(BATCH_SIZE=10)
    rows("long pause", 50)
    fake_gemini.fail_next(429, retry_after="120")
    summary = embed_pending()["testapp.Article.embedding"]
    assert fake_gemini.request_count == 1  # the other four batches were not sent into the pause
    assert summary["failed"] == 10
    paused_until = RateLimit.objects.get().paused_until
    assert paused_until is not None
    failures = EmbeddingFailure.objects.all()
    assert len(failures) == 10
    assert all(not f.permanent and f.retry_at >= paused_until for f in failures)
    assert Article.objects.filter(embedding__isnull=True).count() == 50

    other = rows("another worker", 3)
    assert embed_chunk("testapp.Article", "embedding", other)["requests"] == 0
    assert fake_gemini.request_count == 1


def test_each_title_is_a_request_of_its_own_for_the_rate_limit_and_the_count(fake_gemini, semantic_settings):
    """Gemini takes one title per request: rows with different titles are separate
    requests, and each one waits its turn in the shared limit and is counted."""
    semantic_settings(REQUESTS_PER_MINUTE=2, RATE_LIMIT_WINDOW=60)
    titles = ["Invoices", "Refunds", "Invoices", "Passwords", "Exports"]
    with suspend_embedding():
        Document.objects.bulk_create(Document(title=title, text=f"text {i}") for i, title in enumerate(titles))
    pks = list(Document.objects.order_by("pk").values_list("pk", flat=True))
    outcome, windows = windowed(fake_gemini, "testapp.Document", "content", pks)
    assert outcome["embedded"] == 5 and outcome["requests"] == 4
    bodies = [req["body"]["requests"] for req in fake_gemini.requests]
    sent = [[(r["title"], r["content"]["parts"][0]["text"]) for r in body] for body in bodies]
    assert sent == [
        [("Invoices", "text 0"), ("Invoices", "text 2")],  # one title, one request
        [("Refunds", "text 1")],
        [("Passwords", "text 3")],
        [("Exports", "text 4")],
    ]
    assert Counter(windows) == {0: 2, 1: 2}


def test_a_batch_is_cut_to_fit_the_tokens_per_window(fake_gemini, semantic_settings):
    """A request never carries more estimated tokens than TOKENS_PER_MINUTE allows, except
    a single text larger than that, which goes alone into a window of its own."""
    semantic_settings(TOKENS_PER_MINUTE=25, RATE_LIMIT_WINDOW=60)
    short = [f"short row {i} ".ljust(40, "x") for i in range(4)]  # 10 tokens each (CHARS_PER_TOKEN = 4)
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=title, body="") for title in [*short, "long row ".ljust(200, "y")])
    pks = list(Article.objects.order_by("pk").values_list("pk", flat=True))
    outcome, windows = windowed(fake_gemini, "testapp.Article", "embedding", pks)
    assert outcome["embedded"] == 5 and outcome["requests"] == 3
    sizes = [[len(r["content"]["parts"][0]["text"]) for r in req["body"]["requests"]] for req in fake_gemini.requests]
    assert sizes == [[40, 40], [40, 40], [200]]  # 21 estimated tokens, 21, then 51 alone
    assert windows == [0, 1, 2]


def test_chinese_text_is_counted_at_about_a_token_a_character(fake_gemini, semantic_settings):
    """Ten Chinese characters cost about as many tokens as forty English ones: the batch is
    cut as the English one above is, not sent whole at a quarter of its tokens."""
    semantic_settings(TOKENS_PER_MINUTE=25, RATE_LIMIT_WINDOW=60)
    short = [f"第{i}行冰川在夏天后退"[:10] for i in range(4)]  # 10 characters, 10 tokens each
    with suspend_embedding():
        Article.objects.bulk_create(Article(title=title, body="") for title in [*short, "火山喷发时岩浆流向山谷" * 5])
    pks = list(Article.objects.order_by("pk").values_list("pk", flat=True))
    with ratelimit.use_clock(ManualClock()):
        outcome = embed_chunk("testapp.Article", "embedding", pks)
    assert outcome["embedded"] == 5 and outcome["requests"] == 3
    sizes = [[len(r["content"]["parts"][0]["text"]) for r in req["body"]["requests"]] for req in fake_gemini.requests]
    assert sizes == [[10, 10], [10, 10], [55]]


def test_a_search_inside_a_transaction_does_not_hold_the_rate_limit_for_it(fake_gemini, semantic_settings):
    """ATOMIC_REQUESTS: a search counted in a request's transaction leaves the key's row
    unlocked while the request goes on, for other searches and for workers."""
    semantic_settings(REQUESTS_PER_MINUTE=100)
    searched, release = threading.Event(), threading.Event()
    seen = []

    def request():
        try:
            with transaction.atomic():
                seen.append(list(Article.objects.similar_to("first request's words")))
                searched.set()
                release.wait(60)  # the rest of the request: a slow page, still in its transaction
        finally:
            connections.close_all()

    def other(run):
        try:
            seen.append(run())
        finally:
            connections.close_all()

    first = threading.Thread(target=request)
    first.start()
    try:
        assert searched.wait(30)
        search = threading.Thread(target=other, args=(lambda: list(Article.objects.similar_to("another request")),))
        worker = threading.Thread(target=other, args=(lambda: ratelimit.acquire(get_backend(), tokens=5),))
        for thread in (search, worker):
            thread.start()
            thread.join(30)
        assert not search.is_alive() and not worker.is_alive(), "they waited for the open request's transaction"
        assert first.is_alive()  # still open
        state = RateLimit.objects.get()
        assert (state.requests, len(seen)) == (3, 3)  # each counted, the open request's count committed
    finally:
        release.set()
        first.join(30)
    assert fake_gemini.request_count == 2


def test_a_search_in_a_transaction_that_rolls_back_still_counts(fake_gemini, semantic_settings):
    """The request was sent whatever became of the caller's transaction: its count stays."""
    semantic_settings(REQUESTS_PER_MINUTE=100)
    with pytest.raises(RuntimeError), transaction.atomic():
        list(Article.objects.similar_to("rolled back request"))
        raise RuntimeError("the view failed")
    assert RateLimit.objects.get().requests == 1


@pytest.mark.django_db(transaction=False)
def test_a_count_in_a_test_case_s_transaction_stays_in_it_under_the_test_s_own_atomic(fake_gemini, semantic_settings):
    """A test case's transaction is rolled back after the test; a count committed on a
    connection of its own would outlive it and meet the next tests."""
    semantic_settings(REQUESTS_PER_MINUTE=100)
    with transaction.atomic():
        ratelimit.acquire(get_backend(), tokens=5)
    assert RateLimit.objects.get().requests == 1
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        assert other.execute("SELECT count(*) FROM semantic_ratelimit").fetchone() == (0,)


def test_with_no_limit_set_a_search_only_reads_whether_the_key_is_paused(fake_gemini):
    """Nothing to count: a search neither locks nor writes the key's row, nor, inside a caller's
    transaction, opens a connection of its own to do so; a pause still stops it."""
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        list(Article.objects.similar_to("words of a search with no limit"))
    on_the_key = [query["sql"] for query in queries if RateLimit._meta.db_table in query["sql"]]
    assert len(on_the_key) == 1 and on_the_key[0].startswith("SELECT") and "FOR UPDATE" not in on_the_key[0]
    assert fake_gemini.request_count == 1 and not RateLimit.objects.exists()

    ratelimit.pause(get_backend(), 30)
    with pytest.raises(SearchUnavailable, match=r"Try again in \d+ s"):
        Article.objects.similar_to("words of a search while the key is paused")
    assert fake_gemini.request_count == 1
