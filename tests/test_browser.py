"""A real browser (Debian's Chromium, headless, driven by Playwright) against a live server:
the admin's "Find similar" and duplicate review, and the demo site's search by meaning.
Screenshots go to a temporary folder (see SCREENSHOTS), never into the repository."""

import os
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache

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
    text = groups.first.inner_text()
    assert "invoices" in text.lower() or "password" in text.lower()
    page.screenshot(path=SCREENSHOTS / "admin-duplicate-review.png", full_page=True)

    # The pair dismissed must be gone from the page, not merely a message shown.
    pair = groups.first.locator("tbody tr").first
    names = tuple(link.inner_text() for link in pair.locator("a").all())
    pairs_shown = page.locator(".semantic-group tbody tr").count()

    def shown(rows):
        return [tuple(link.inner_text() for link in row.locator("a").all()) for row in rows.all()]

    assert names in shown(page.locator(".semantic-group tbody tr"))
    pair.locator("input[value='Not a duplicate']").click()
    page.wait_for_selector(".messagelist")
    assert "not duplicates" in page.locator(".messagelist").inner_text()
    assert names not in shown(page.locator(".semantic-group tbody tr"))
    assert page.locator(".semantic-group tbody tr").count() == pairs_shown - 1


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
