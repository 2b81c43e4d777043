"""The demo stack as ``make demo`` starts it, for scripts that measure or photograph it.

A fresh database of its own on the demo's PostgreSQL (``.pgdata/`` or DATABASE_URL),
``migrate``, ``semantic_prepare_model`` and ``load_demo_data``, then ``qcluster`` and ``runserver`` as real
processes with the demo's settings and the local model (GEMINI_API_KEY is dropped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from benchmarks.common import BASE_DIR

ADDRESS_LINE = "Starting development server at"


@dataclass
class Demo:
    base_url: str
    started: float
    ready: float
    console: list[str] = field(default_factory=list)


def fresh_database(name: str) -> None:
    sys.path.insert(0, str(BASE_DIR))
    import psycopg

    from project.database import database_settings

    config = database_settings()
    params = {"dbname": "postgres", "user": config["USER"], "host": config["HOST"], "port": config.get("PORT") or None}
    if config.get("PASSWORD"):
        params["password"] = config["PASSWORD"]
    with psycopg.connect(**params, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")


@contextmanager
def running_demo(database: str, port: int) -> Iterator[Demo]:
    """Yield once runserver has printed its address; stop both processes afterwards."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "SEMANTIC_TEST_DATABASE": database}
    env.pop("GEMINI_API_KEY", None)
    fresh_database(database)
    for command in (["migrate", "--verbosity", "0"], ["semantic_prepare_model"], ["load_demo_data"]):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=BASE_DIR, env=env, check=True, stdout=subprocess.DEVNULL
        )
    worker = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=BASE_DIR, env=env, start_new_session=True)
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}"],
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
                if ADDRESS_LINE in line:
                    address.set()

        threading.Thread(target=read, daemon=True).start()
        if not address.wait(120):
            raise SystemExit("runserver printed no address:\n" + "\n".join(console))
        yield Demo(f"http://127.0.0.1:{port}", started, time.monotonic(), console)
    finally:
        for process in (server, worker):
            os.killpg(process.pid, signal.SIGINT)
        for process in (server, worker):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
