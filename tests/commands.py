"""Running management commands from tests: in this process, or as a child process."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.management import CommandError, call_command
from django.db import connection

from tests.fake_gemini import FakeGemini

BASE_DIR = Path(__file__).resolve().parent.parent


def call(*args: str) -> tuple[str, str]:
    """``call_command(*args)``; returns what it wrote to stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def call_failing(*args: str) -> tuple[str, str, str]:
    """``call_command(*args)`` that ends in a CommandError (exit status 1): what it wrote to
    stdout and stderr, and the error's message."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as error:
        return out.getvalue(), err.getvalue(), str(error)
    raise AssertionError(f"{args} did not fail: {out.getvalue()} {err.getvalue()}")


def manage(fake: FakeGemini, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """``manage.py *args`` as a child process on the test database and the fake server."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "SEMANTIC_TEST_DATABASE": connection.settings_dict["NAME"],
        "SEMANTIC_TEST_BASE_URL": fake.base_url,
        **(env or {}),
    }
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    if popen["stdout"] is subprocess.PIPE:
        popen.setdefault("text", True)
    # Ctrl-C as a terminal sends it, even when the tests run as a background job: a shell
    # starts those with SIGINT ignored, the child inherits that, and Python then never
    # raises KeyboardInterrupt (the tests that stop a command with SIGINT would hang).
    popen.setdefault("preexec_fn", _default_sigint)
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=environment, **popen)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def running_qcluster(fake: FakeGemini, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A real ``qcluster`` worker on the test database for the block; its log is printed after."""
    with log.open("wb") as out:
        process = manage(fake, "qcluster", env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        print(log.read_text())


def processed(log: Path, func: str) -> int:
    """Runs of ``func`` that succeeded, as a ``qcluster`` log says: the app's successes are not stored."""
    return log.read_text().count(f"Processed '{func}'")
