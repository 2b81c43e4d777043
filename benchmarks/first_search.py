"""How long a newcomer waits after ``make demo``: the first search, and a new question.

Starts the demo stack as ``make demo`` does (``migrate``, ``load_demo_data``, then
``qcluster`` and ``runserver`` as real processes with the demo's settings and the
local model) on a fresh database of its own, waits for runserver's
"Starting development server at" line, then measures:

- seconds from that line until the first search answers (and until it answers with
  the demo's questions in it: the worker has to embed them first);
- seconds from posting a new question until a search for it lists it first.

    .venv/bin/python -m benchmarks.first_search [--port 8765]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time

import requests

from benchmarks.common import BASE_DIR

DATABASE = "semantic_first_search"
QUERY = "I can't get into my account, forgot the password"
NEW = {
    "title": "Can I get a printed copy of my invoice by post?",
    "body": "Our auditors want paper invoices.",
    "confirm": "1",
}


def fresh_database() -> None:
    sys.path.insert(0, str(BASE_DIR))
    import psycopg

    from project.database import database_settings

    config = database_settings()
    params = {"dbname": "postgres", "user": config["USER"], "host": config["HOST"], "port": config.get("PORT") or None}
    if config.get("PASSWORD"):
        params["password"] = config["PASSWORD"]
    with psycopg.connect(**params, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {DATABASE}")


def run(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "SEMANTIC_TEST_DATABASE": DATABASE}
    env.pop("GEMINI_API_KEY", None)
    fresh_database()
    run("migrate", "--verbosity", "0", env=env)
    run("load_demo_data", env=env)
    base = f"http://127.0.0.1:{args.port}"
    worker = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=BASE_DIR, env=env, start_new_session=True)
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{args.port}"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        address = threading.Event()
        console: list[str] = []

        def read() -> None:
            for line in server.stdout:
                console.append(line.rstrip())
                if "Starting development server at" in line:
                    address.set()

        threading.Thread(target=read, daemon=True).start()
        if not address.wait(120):
            raise SystemExit("runserver printed no address:\n" + "\n".join(console))
        ready = time.monotonic()
        print(f"runserver printed its address {ready - started:.1f} s after start")

        response = requests.get(f"{base}/", params={"q": QUERY}, timeout=300)
        answered = time.monotonic() - ready
        print(f"first search answered after {answered:.1f} s (HTTP {response.status_code})")
        while 'ol class="results"' not in requests.get(f"{base}/", params={"q": QUERY}, timeout=300).text:
            time.sleep(0.2)
        print(f"first search with results after {time.monotonic() - ready:.1f} s")

        session = requests.Session()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', session.get(f"{base}/ask/").text)[1]
        posted = time.monotonic()
        response = session.post(f"{base}/ask/", data={**NEW, "csrfmiddlewaretoken": token}, allow_redirects=False)
        assert response.status_code == 302, response.status_code
        title = NEW["title"]
        while True:
            page = requests.get(f"{base}/", params={"q": title}, timeout=300).text
            first = re.search(r'<ol class="results"[^>]*>\s*<li><a [^>]*>([^<]*)</a>', page)
            if first and first[1] == title:
                break
            time.sleep(0.2)
        print(f"new question searchable {time.monotonic() - posted:.1f} s after posting")
        noise = [line for line in console if "Loading weights" in line or "INFO" in line]
        print(f"runserver console lines: {len(console)}, progress bars or INFO lines: {len(noise)}")
    finally:
        for process in (server, worker):
            os.killpg(process.pid, signal.SIGINT)
        for process in (server, worker):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
