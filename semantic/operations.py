"""Migration operations."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError
from django.db.migrations.operations.base import Operation

INSTALL_HINT = (
    "django-semantic needs the pgvector extension. Install it on the PostgreSQL server "
    "(Debian/Ubuntu: apt install postgresql-<version>-pgvector; other systems: "
    "https://github.com/pgvector/pgvector#installation), or connect as a user allowed "
    "to run CREATE EXTENSION vector, then run migrate again."
)


#: What the operation runs; ``sqlmigrate`` prints it for whoever applies migrations by hand.
CREATE_SQL = "CREATE EXTENSION IF NOT EXISTS vector"


class CreateVectorExtension(Operation):
    """``CREATE EXTENSION IF NOT EXISTS vector``, with an error that says what to install."""

    reversible = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.collect_sql:
            # sqlmigrate: only say what would run. The database is not to be touched, and the
            # printed SQL must work on a fresh database, where the extension is not there yet.
            if schema_editor.connection.vendor == "postgresql":
                schema_editor.execute(CREATE_SQL)
            return
        create_extension(schema_editor.connection)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        pass

    def describe(self) -> str:
        return "Creates the pgvector extension"


def create_extension(connection: Any) -> None:
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        if cursor.fetchone():
            return
        try:
            cursor.execute(CREATE_SQL)
        except DatabaseError as exc:
            raise DatabaseError(f"{INSTALL_HINT} (PostgreSQL said: {exc})") from exc


def ensure_vector_extension(using: str = "default", **kwargs: Any) -> None:
    """``pre_migrate`` receiver: the extension exists before any table uses ``vector``."""
    from django.db import connections

    create_extension(connections[using])
