"""How long a newcomer waits after ``make demo``: the first search, and a new question.

Starts the demo stack as ``make demo`` does (benchmarks/demo_stack.py: ``migrate``,
``load_demo_data``, then ``qcluster`` and ``runserver`` as real processes with the
demo's settings and the local model) on a fresh database of its own, waits for
runserver's "Starting development server at" line, then measures:

- seconds from that line until the first search answers (and until it answers with
  the demo's questions in it: the worker has to embed them first);
- seconds from posting a new question until a search for it lists it first.

    .venv/bin/python -m benchmarks.first_search [--port 8765]
"""

from __future__ import annotations

import argparse
import re
import time

import requests

from benchmarks.demo_stack import running_demo

QUERY = "I can't get into my account, forgot the password"
# Ask's second step: the category chosen (here: none), the did-you-mean notice passed.
NEW = {
    "title": "Can I get a printed copy of my invoice by post?",
    "body": "Auditors want paper.",
    "category": "",
    "confirm": "1",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with running_demo("semantic_first_search", args.port) as demo:
        base, ready = demo.base_url, demo.ready
        print(f"runserver printed its address {ready - demo.started:.1f} s after start")
        response = requests.get(f"{base}/", params={"q": QUERY}, timeout=300)
        print(f"first search answered after {time.monotonic() - ready:.1f} s (HTTP {response.status_code})")
        while 'ol class="results"' not in requests.get(f"{base}/", params={"q": QUERY}, timeout=300).text:
            time.sleep(0.2)
        print(f"first search with results after {time.monotonic() - ready:.1f} s")

        session = requests.Session()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', session.get(f"{base}/ask/").text)[1]
        posted = time.monotonic()
        response = session.post(f"{base}/ask/", data={**NEW, "csrfmiddlewaretoken": token}, allow_redirects=False)
        assert response.status_code == 302, response.status_code
        while True:
            page = requests.get(f"{base}/", params={"q": NEW["title"]}, timeout=300).text
            first = re.search(r'<ol class="results"[^>]*>\s*<li><a [^>]*>([^<]*)</a>', page)
            if first and first[1] == NEW["title"]:
                break
            time.sleep(0.2)
        print(f"new question searchable {time.monotonic() - posted:.1f} s after posting")
        noise = [line for line in demo.console if "Loading weights" in line or "INFO" in line]
        print(f"runserver console lines: {len(demo.console)}, progress bars or INFO lines: {len(noise)}")


if __name__ == "__main__":
    main()
