"""docs/screenshots/*.png from the real demo: local model, demo data, real processes.

``make screenshots`` runs this. It starts the demo stack (benchmarks/demo_stack.py),
waits until the worker has embedded the demo questions, and photographs the demo's
pages and the admin with Debian's Chromium through Playwright. Not part of ``make
test``: it needs the local model and takes a minute or more.

    .venv/bin/python -m benchmarks.screenshots [--port 8766]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from urllib.parse import quote_plus

import requests

from benchmarks.common import BASE_DIR
from benchmarks.demo_stack import running_demo

OUT = BASE_DIR / "docs" / "screenshots"
#: The query of demo-search.png.
SEARCHED = "I can't get into my account"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def every_result_shows_a_passage(base: str, query: str) -> bool:
    page = requests.get(f"{base}/", params={"q": query}, timeout=300).text
    results = page.count("<li><a href=")
    return results > 0 and page.count('class="passage"') == results


def shoot(base: str) -> list[str]:
    from playwright.sync_api import sync_playwright

    taken = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=FLAGS, headless=True, viewport={"width": 1000, "height": 700}
        )
        page = context.new_page()

        def save(name: str) -> None:
            page.screenshot(path=OUT / name, full_page=True)
            taken.append(name)

        page.goto(f"{base}/?q={quote_plus(SEARCHED)}")
        save("demo-search.png")
        page.goto(f"{base}/?q=purple+elephants+dancing")
        save("demo-no-match.png")
        page.goto(f"{base}/ask/")
        page.fill("#id_title", "I was charged two times")
        page.click("button:has-text('Next')")
        page.wait_for_selector(".notice")
        save("demo-did-you-mean.png")
        page.goto(f"{base}/ask/")
        page.fill("#id_title", "The VAT number is missing on my invoices")
        page.fill("#id_body", "Our accountant needs it on every invoice.")
        page.click("button:has-text('Next')")
        page.wait_for_selector(".suggestion")
        save("demo-category.png")
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{base}/?q=app+keeps+crashing+on+my+phone")
        save("demo-phone.png")
        page.set_viewport_size({"width": 1200, "height": 800})
        page.goto(f"{base}/admin/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        page.click("input[type=submit]")
        page.wait_for_url(f"{base}/admin/")
        page.goto(f"{base}/admin/questions/question/")
        save("admin-changelist.png")
        page.goto(f"{base}/admin/questions/question/?q=I+can%27t+log+in&semantic=1")
        save("admin-meaning-search.png")
        page.goto(f"{base}/admin/questions/question/")
        page.check("input.action-select >> nth=0")
        page.select_option("select[name=action]", "find_similar")
        page.click("button[name=index]")
        save("admin-find-similar.png")
        page.goto(f"{base}/admin/questions/question/duplicates/?threshold=0.7")
        save("admin-duplicate-review.png")
        page.click("a:has-text('Compare') >> nth=0")
        save("admin-compare.png")
        page.goto(f"{base}/admin/questions/question/?category__exact=")
        save("admin-suggested-labels.png")
        page.goto(f"{base}/admin/questions/question/topics/")
        save("admin-topics.png")
        page.goto(f"{base}/admin/semantic/embeddingfailure/status/")
        save("admin-status.png")
        context.close()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with running_demo("semantic_screenshots", args.port) as demo:
        while 'ol class="results"' not in requests.get(f"{demo.base_url}/", params={"q": "refund"}, timeout=300).text:
            time.sleep(0.5)
        # Every demo question embedded, so the duplicate review sees them all.
        while "being embedded" in requests.get(f"{demo.base_url}/1/", timeout=300).text:
            time.sleep(0.5)
        # And the answers' passages, which the search shows under each result.
        while not every_result_shows_a_passage(demo.base_url, SEARCHED):
            time.sleep(0.5)
        time.sleep(2)
        for name in shoot(demo.base_url):
            print(OUT / name)


if __name__ == "__main__":
    main()
