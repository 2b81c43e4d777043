"""A real browser (Debian's Chromium, headless, driven by Playwright) against a live server:
the admin's "Find similar" and duplicate review, and the demo site's search by meaning.
Screenshots go to a temporary folder (see SCREENSHOTS), never into the repository."""

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connections

from project.questions.models import Question
from semantic import embed_pending
from tests.browser import browser_page, needs_chromium

# Screenshots of a test run show the test suite's fake vectors, not the product: they go
# to a temporary folder (SEMANTIC_SCREENSHOTS=<dir> to keep them), never over the tracked
# docs/screenshots/, which come from the real demo.
SCREENSHOTS = Path(os.environ.get("SEMANTIC_SCREENSHOTS") or tempfile.mkdtemp(prefix="semantic-screenshots-"))
pytestmark = [
    pytest.mark.django_db(transaction=True),
    needs_chromium,
]

QUESTIONS = [
    ("How do I reset my password?", "I forgot the password for my account."),
    ("I forgot my password, how do I reset it?", "Locked out of my account."),
    ("How do I export my invoices as CSV?", "Our accountant needs a spreadsheet."),
    ("Export all invoices to a CSV file", "Downloading invoices one by one is slow."),
    ("The mobile app crashes on start", "Since the update it closes at once."),
    ("Dark mode for the dashboard", "The white background is hard on the eyes."),
]


@pytest.fixture
def page(live_server, fake_gemini):
    cache.clear()
    Question.objects.bulk_create(Question(title=t, body=b) for t, b in QUESTIONS)
    embed_pending()
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page(live_server.url, width=1200, height=800) as page:
        yield page


def questions_left():
    """Counted from another thread: Playwright's event loop makes Django refuse queries in this one."""

    def count():
        try:
            return Question.objects.count()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(count).result()


def login(page):
    page.goto(f"{page.base_url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin")
    page.click("input[type=submit]")
    page.wait_for_url(f"{page.base_url}/admin/")


def test_admin_find_similar_and_duplicate_review(page):
    login(page)
    page.goto(f"{page.base_url}/admin/questions/question/")
    page.screenshot(path=SCREENSHOTS / "admin-changelist.png")
    row = page.locator("#result_list tr", has_text="How do I reset my password?")
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "find_similar")
    page.click("button[name=index]")
    page.wait_for_selector(".semantic-similar")
    section = page.locator(".semantic-similar section").first
    assert "How do I reset my password?" in section.locator("h2").inner_text()
    first = section.locator("tbody tr").first
    assert "I forgot my password, how do I reset it?" in first.inner_text()
    assert float(first.locator(".semantic-score").inner_text()) > 0.3
    page.screenshot(path=SCREENSHOTS / "admin-find-similar.png", full_page=True)

    page.goto(f"{page.base_url}/admin/questions/question/duplicates/?threshold=0.5")
    groups = page.locator(".semantic-group")
    assert groups.count() >= 1
    assert "similar rows, similarity" in groups.first.locator("h2").inner_text()
    headers = groups.first.locator(".semantic-rows thead th").all_inner_texts()
    assert [h.strip().lower() for h in headers[:5]] == ["id", "question", "similarity to the first", "text", "created"]
    text = groups.first.inner_text()
    assert "invoices" in text.lower() or "password" in text.lower()
    page.screenshot(path=SCREENSHOTS / "admin-duplicate-review.png", full_page=True)

    def shown():
        rows = page.locator(".semantic-pairs tbody tr").all()
        return [tuple(link.inner_text() for link in row.locator("td a:not(.semantic-compare)").all()) for row in rows]

    # Open the first pair side by side, then mark it not a duplicate there: it must be gone
    # from the review, not merely a message shown.
    before = shown()
    pair = groups.first.locator(".semantic-pairs tbody tr").first
    names = before[0]
    pair.locator("a.semantic-compare").click()
    page.wait_for_selector(".semantic-compare table")
    sides = page.locator(".semantic-compare thead th.semantic-side").all_inner_texts()
    assert [any(name.lower() in side.lower() for side in sides) for name in names] == [True, True]
    assert page.locator(".semantic-compare tr.semantic-differs").count() >= 1
    page.screenshot(path=SCREENSHOTS / "admin-compare.png", full_page=True)
    page.locator(".semantic-dismiss input[value='Not a duplicate']").click()
    page.wait_for_selector(".messagelist")
    assert "not duplicates" in page.locator(".messagelist").inner_text()
    assert "threshold=0.5" in page.url
    after = shown()
    assert names not in after and len(after) == len(before) - 1

    # Lower the threshold with the page's own form; then "Keep this one" deletes the other
    # only through Django's confirmation page, and comes back to the review.
    page.fill("#threshold", "0")
    page.click(".semantic-threshold input[type=submit]")
    page.wait_for_url("**threshold=0**")
    page.locator(".semantic-pairs a.semantic-compare").first.click()
    page.wait_for_selector(".semantic-compare table")
    page.locator("a.semantic-keep-this").first.click()
    page.wait_for_url("**/delete/**")
    assert "Are you sure" in page.content()
    assert questions_left() == len(QUESTIONS)
    page.click("input[type=submit]")
    page.wait_for_selector(".messagelist")
    assert "/duplicates/" in page.url and "threshold=0" in page.url
    assert "deleted successfully" in page.locator(".messagelist").inner_text()
    assert questions_left() == len(QUESTIONS) - 1


def test_demo_site_search_by_meaning(page):
    page.goto(f"{page.base_url}/?q=reset+forgotten+password")
    items = page.locator("ol li")
    # Search by meaning, not the newest first: both password questions lead the list.
    leading = " ".join(items.nth(i).inner_text().lower() for i in range(2))
    assert leading.count("password") >= 2
    assert float(items.first.locator(".score").inner_text()) > 0.3
    page.screenshot(path=SCREENSHOTS / "demo-search.png", full_page=True)
    items.first.locator("a").click()
    page.wait_for_selector("h2:has-text('Similar questions')")
    # The opened question is never its own neighbour, and its nearest is the other password question.
    opened = page.locator("h1").first.inner_text()
    similar = page.locator("ol li")
    assert similar.count() >= 1 and opened not in similar.first.inner_text()
    assert "password" in similar.first.inner_text().lower()
    page.goto(f"{page.base_url}/ask/")
    page.fill("#id_title", "How do I reset my password?")
    page.fill("#id_body", "I forgot the password for my account.")
    page.click("button:has-text('Next')")
    page.wait_for_selector(".notice")
    assert "Did you mean" in page.locator(".notice").inner_text()
    page.screenshot(path=SCREENSHOTS / "demo-did-you-mean.png", full_page=True)


def results(page):
    """The titles and similarity scores of the changelist's rows, top to bottom."""
    rows = page.locator("#result_list tbody tr")
    return [
        (row.locator(".field-title").inner_text(), float(row.locator(".semantic-score").inner_text()))
        for row in rows.all()
    ]


def test_admin_search_by_meaning_survives_a_filter_and_a_sort(page):
    login(page)
    page.goto(f"{page.base_url}/admin/questions/question/")
    page.fill("#searchbar", "reset forgotten password")
    page.check("#semantic-toggle")
    page.click("#changelist-search input[type=submit]")
    page.wait_for_selector(".semantic-score")
    ranked = results(page)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    assert all("password" in title.lower() for title, _ in ranked[:2])

    page.click("#changelist-filter a:text-is('embedded')")
    page.wait_for_url("**embedding_state=embedded**")
    assert page.is_checked("#semantic-toggle") and page.input_value("#searchbar") == "reset forgotten password"
    assert results(page) == ranked  # every row is embedded: the same rows, still ranked by meaning
    page.screenshot(path=SCREENSHOTS / "admin-search-by-meaning.png", full_page=True)

    # A sort header sorts the rows found by meaning, as Django sorts keyword results; the toggle stays on.
    page.click("#result_list th.column-title .text a")
    page.wait_for_url("**o=**")
    assert page.is_checked("#semantic-toggle")
    by_title = results(page)
    assert [title for title, _ in by_title] == sorted(title for title, _ in ranked)
    assert sorted(by_title) == sorted(ranked)
    # Taking that column off the sort leaves the ranking by meaning.
    page.hover("#result_list th.column-title")  # Django shows "remove from sorting" on hover
    page.click("#result_list th.column-title a.sortremove")
    page.wait_for_url(lambda url: "embedding_state=embedded" in url and "semantic=1" in url)
    page.wait_for_selector("#result_list th.column-title:not(.sorted)")
    assert page.is_checked("#semantic-toggle")
    assert results(page) == ranked

    # At 320 px (a 1280 px window zoomed to 400 %) the row wraps: the box keeps room for a few
    # words beside the toggle and nothing sticks out of the page (WCAG 1.4.10).
    page.set_viewport_size({"width": 320, "height": 640})
    assert page.locator("#searchbar").bounding_box()["width"] >= 80
    assert page.locator("label:has(#semantic-toggle)").bounding_box()["height"] < 30  # one line, not squeezed to two
    assert page.evaluate("document.documentElement.scrollWidth") <= 320


#: A policy without 'unsafe-inline', as django-csp or Django 6's SECURE_CSP sends it.
STRICT_CSP = "default-src 'self'; img-src 'self' data:"


def with_header(route, name, value):
    response = route.fetch(max_redirects=0)
    route.fulfill(response=response, headers={**response.headers, name: value})


def test_admin_pages_look_right_under_a_strict_content_security_policy(page):
    """Every response gets the policy on its way to the browser; the browser reports each
    inline style or script it refuses, and what the styles draw is measured."""
    refused = []
    page.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
    page.route("**/*", lambda route: with_header(route, "Content-Security-Policy", STRICT_CSP))
    login(page)
    admin = f"{page.base_url}/admin/questions/question/"
    page.goto(f"{admin}?q=reset+forgotten+password&semantic=1")
    assert refused == []
    bar = page.locator("meter.semantic-bar").first
    score = float(page.locator(".semantic-score").first.inner_text())
    box = bar.bounding_box()
    assert box["width"] > 30 and 0 < box["height"] < 20 and bar.get_attribute("value") == f"{score:.3f}"
    assert page.locator(".semantic-score").first.evaluate("e => getComputedStyle(e).fontVariantNumeric") == (
        "tabular-nums"
    )
    page.screenshot(path=SCREENSHOTS / "csp-admin-search-by-meaning.png", full_page=True)

    page.goto(f"{admin}duplicates/?threshold=0.5")
    assert refused == []
    score_cell = page.locator(".semantic-pairs td.semantic-score").first
    assert score_cell.evaluate("e => getComputedStyle(e).textAlign") == "right"
    dismiss = page.locator("form.semantic-dismiss-inline").first
    assert dismiss.evaluate("e => getComputedStyle(e).display") == "inline"
    page.screenshot(path=SCREENSHOTS / "csp-admin-duplicate-review.png", full_page=True)

    page.locator(".semantic-pairs a.semantic-compare").first.click()
    page.wait_for_selector(".semantic-compare table")
    assert refused == []
    differs = page.locator("tr.semantic-differs th[scope=row] .semantic-differs-mark").first
    assert differs.evaluate("e => e.textContent") == "≠(differs)"  # the words visually hidden, the sign aria-hidden
    assert differs.evaluate("e => getComputedStyle(e).color") == "rgb(186, 33, 33)"  # --error-fg
    page.screenshot(path=SCREENSHOTS / "csp-admin-compare.png", full_page=True)

    # admin.site registers the EmbeddingFailure admin: the status page is beside the failures.
    for path in (f"{admin}topics/", f"{page.base_url}/admin/semantic/embeddingfailure/status/"):
        page.goto(path)
        assert page.locator("#content-main table").count() >= 1, path
        assert refused == [], path
        assert page.locator(".semantic-scroll").first.evaluate("e => getComputedStyle(e).overflowX") == "auto"
