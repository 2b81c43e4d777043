"""Shared set-up for the benchmarks: a database of their own on the embedded (or
DATABASE_URL) PostgreSQL, migrated, with the test app's models."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATABASE = "semantic_bench"


def setup(database: str = DATABASE, **semantic: object) -> None:
    """Configure Django on a benchmark database, creating and migrating it if needed."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    os.environ["SEMANTIC_TEST_DATABASE"] = database
    sys.path.insert(0, str(BASE_DIR))
    import psycopg

    from project.database import database_settings

    config = {**database_settings(), "NAME": "postgres"}
    params = {"dbname": "postgres", "user": config["USER"], "host": config["HOST"]}
    if config.get("PASSWORD"):
        params["password"] = config["PASSWORD"]
    if config.get("PORT"):
        params["port"] = config["PORT"]
    with psycopg.connect(**params, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            connection.execute(f"CREATE DATABASE {database}")

    import django
    from django.conf import settings

    django.setup()
    settings.SEMANTIC = {**settings.SEMANTIC, **semantic}
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def start_worker(env: dict[str, str] | None = None) -> subprocess.Popen:
    """A real django-q2 worker on the benchmark database."""
    environment = {**os.environ, "SEMANTIC_TEST_DATABASE": DATABASE, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=BASE_DIR,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.5) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not done after {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - start
