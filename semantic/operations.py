"""Migration operations."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, router
from django.db.migrations.operations.base import Operation

INSTALL_HINT = (
    "django-semantic needs the pgvector extension. Install it on the PostgreSQL server "
    "(Debian/Ubuntu: apt install postgresql-<version>-pgvector; other systems: "
    "https://github.com/pgvector/pgvector#installation), or connect as a user allowed "
    "to run CREATE EXTENSION vector, then run migrate again."
)

NOT_ALLOWED = (
    "pgvector is installed on the PostgreSQL server, but this role may not create the extension in database "
    "{database!r}. Ask a superuser to run CREATE EXTENSION vector; in that database, and for test databases "
    "(manage.py test) in template1 as well, since new databases copy it; or give this role that right "
    "(a superuser, or the managed service's own admin role)."
)

#: A schema name PostgreSQL reads as written, unquoted (lower case, no spaces or dashes).
PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")

#: SQLSTATE insufficient_privilege: the extension is there to create, not by this role.
INSUFFICIENT_PRIVILEGE = "42501"

#: Why pgvector's types cannot be found (the fix follows, in ELSEWHERE or ELSEWHERE_TENANTS).
OFF_THE_PATH = (
    "The pgvector extension is installed in schema {schema!r} of database {alias!r}, which is not on the "
    "connection's search_path ({path}), so PostgreSQL cannot find its types (vector, halfvec). "
)
ELSEWHERE = OFF_THE_PATH + (
    'Put the schema on the search_path: in DATABASES[{alias!r}], "OPTIONS": {{"options": {options}}}, '
    "or ALTER ROLE {quoted_role} SET search_path = {fixed}; then run migrate again."
)
#: The same with django-tenants' backend, which sets each connection's search_path itself.
ELSEWHERE_TENANTS = OFF_THE_PATH + (
    "django-tenants sets the search_path of each connection itself: add the schema to it in your settings, "
    "PG_EXTRA_SEARCH_PATHS = [{schema!r}]; then run migrate_schemas again."
)
#: The schema may well be named on the search_path: PostgreSQL leaves out of it the schemas
#: the role may not use, so putting it there again changes nothing.
NO_USAGE = (
    "The pgvector extension is installed in schema {schema!r} of database {alias!r}, on which the role "
    "{role!r} has no USAGE privilege, so PostgreSQL leaves that schema out of the connection's search_path "
    "({path}) and cannot find pgvector's types (vector, halfvec). Ask a superuser (or the schema's owner) to run "
    "GRANT USAGE ON SCHEMA {quoted_schema} TO {quoted_role}; in that database, then run migrate again."
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
        if router.allow_migrate(schema_editor.connection.alias, app_label):
            create_extension(schema_editor.connection)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        pass

    def describe(self) -> str:
        return "Creates the pgvector extension"


def create_extension(connection: Any) -> None:
    if connection.vendor != "postgresql":
        return
    if problem := extension_elsewhere(connection):
        raise DatabaseError(problem)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        if cursor.fetchone():
            return
        try:
            cursor.execute(CREATE_SQL)
        except DatabaseError as exc:
            if sqlstate(exc) == INSUFFICIENT_PRIVILEGE:
                # Installing pgvector or migrating again would not help: someone else must create it.
                hint = NOT_ALLOWED.format(database=connection.settings_dict["NAME"])
            else:
                hint = INSTALL_HINT
            raise DatabaseError(f"{hint} (PostgreSQL said: {exc})") from exc


def sqlstate(exc: DatabaseError) -> str | None:
    """The SQLSTATE of the driver's error Django wrapped, psycopg 3's or psycopg2's."""
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)


def extension_elsewhere(connection: Any) -> str | None:
    """Why pgvector's types cannot be found although it is installed: its schema is not on the
    search_path (managed services such as Supabase install extensions in a schema of their own),
    or the role may not use that schema (a DBA created it and forgot the GRANT)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, n.nspname = ANY (current_schemas(false)), current_setting('search_path'), "
            "has_schema_privilege(n.oid, 'USAGE'), current_user "
            "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        )
        row = cursor.fetchone()
    if row is None or row[1]:
        return None
    schema, _, path, usable, role = row
    # Quoted in the SQL the messages give: a role or schema created with capitals or "-" (managed
    # services make such names) would otherwise be folded to lower case and name another, or none.
    quoted_role = connection.ops.quote_name(role)
    if not usable:
        quoted_schema = connection.ops.quote_name(schema)
        return NO_USAGE.format(
            schema=schema,
            alias=connection.alias,
            path=path,
            role=role,
            quoted_schema=quoted_schema,
            quoted_role=quoted_role,
        )
    if hasattr(connection, "set_tenant"):
        return ELSEWHERE_TENANTS.format(schema=schema, alias=connection.alias, path=path)
    fixed = fixed_path(path, schema, connection.ops.quote_name)
    return ELSEWHERE.format(
        schema=schema, alias=connection.alias, path=path, fixed=fixed, options=options(fixed), quoted_role=quoted_role
    )


def fixed_path(path: str, schema: str, quote: Callable[[str], str]) -> str:
    """The connection's search_path with ``schema`` last: the project's own schemas stay first,
    where its tables are. ``"$user"`` (the default's schema named as the role, rarely there) is left
    out. ``schema`` is quoted when its name needs it (capitals, spaces: managed services make such
    names), as the search_path shows the others already."""
    kept = [name.strip() for name in path.split(",") if name.strip() and name.strip() != '"$user"']
    return ",".join([*kept, schema if PLAIN_NAME.fullmatch(schema) else quote(schema)])


def options(path: str) -> str:
    """The Python literal of libpq's ``options`` that sets ``path``: a space in it escaped with a
    backslash (libpq splits options at spaces), and single-quoted when it holds double quotes."""
    value = "-c search_path=" + path.replace("\\", "\\\\").replace(" ", "\\ ")
    return f'"{value}"' if '"' not in value and "\\" not in value else repr(value)


def ensure_vector_extension(using: str = "default", **kwargs: Any) -> None:
    """``pre_migrate`` receiver: the extension exists before any table uses ``vector``, on a
    database the app's tables may go to (rows with vectors need them beside: semantic.E008)."""
    from django.db import connections

    if router.allow_migrate(using, "semantic"):
        create_extension(connections[using])
