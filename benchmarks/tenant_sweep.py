"""The sweep with schemas per tenant: what visiting a tenant's schema costs when nothing waits.

A throwaway django-tenants project, built as ``tests/test_tenants.py`` builds one (the README's
tenants settings and model, ``migrate_schemas``, the fake Gemini server), with TENANTS tenants
of ROWS embedded notes each. In the project's own process, the median of RUNS calls of
``semantic.tasks.sweep()`` (what the sweep's schedule runs: every schema, each field's scans for
pending rows, failures and orphans), and the statements one call sends, against a baseline
measured in the same run: one hand-written query per tenant schema, ``SELECT 1 FROM
"<schema>".notes_note LIMIT 1``, the least a visit to a schema can cost.

    .venv/bin/python -m benchmarks.tenant_sweep [--tenants 20] [--rows 50] [--limit-set-calls]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import setup
from tests.fake_gemini import FakeGemini

RUNS = 20

#: Run in the project: times the sweep and the baseline, counts the sweep's statements.
MEASURE = """
import statistics, time
from django.db import connection
from django.test.utils import CaptureQueriesContext
from customers.models import Client
from semantic.tasks import sweep

schemas = list(Client.objects.exclude(schema_name="public").values_list("schema_name", flat=True))
sweep()  # the first one embeds the rows; the timed ones find nothing to do

def timed(run):
    run()
    times = []
    for _ in range({runs}):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000

def floor():
    with connection.cursor() as cursor:
        for schema in schemas:
            cursor.execute(f'SELECT 1 FROM "{{schema}}".notes_note LIMIT 1')
            cursor.fetchall()

swept = timed(sweep)
least = timed(floor)
with CaptureQueriesContext(connection) as statements:
    summary = sweep()
print(f"tenants {{len(schemas)}}, sweep summaries {{len(summary)}}")
per_schema = len(statements) / len(schemas)
sets = sum(q["sql"].startswith("SET search_path") for q in statements.captured_queries) / len(schemas)
print(f"sweep: {{swept:.1f}} ms, {{swept / len(schemas):.2f}} ms and {{per_schema:.1f}} statements per tenant schema")
print(f"  of which {{sets:.1f}} are django-tenants' SET search_path")
print(f"baseline, one query per schema: {{least:.1f}} ms, {{least / len(schemas):.3f}} ms per schema")
print(f"ratio sweep / baseline: {{swept / least:.1f}}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument(
        "--limit-set-calls",
        action="store_true",
        help="django-tenants' TENANT_LIMIT_SET_CALLS: a SET only when it changes",
    )
    args = parser.parse_args()
    setup()  # the embedded server up, and Django configured for the imports below
    import psycopg
    from django.db import connection

    from tests.test_adoption import readme_snippet
    from tests.test_tenants import CUSTOMERS_MODELS, TENANT_SETTINGS

    settings = connection.settings_dict
    server = {"user": settings["USER"], "host": settings["HOST"], "port": str(settings["PORT"] or "")}
    database = "bench_tenant_sweep"
    with psycopg.connect(dbname="postgres", autocommit=True, **{k: v for k, v in server.items() if v}) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    with FakeGemini() as gemini, tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "project"
        root.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "GOOGLE_API_KEY")}
        env.update(ADOPT_DB_NAME=database, ADOPT_DB_HOST=server["host"], ADOPT_DB_USER=server["user"])
        env.update(ADOPT_DB_PORT=server["port"], GEMINI_API_KEY="bench-key", ADOPT_GEMINI_URL=gemini.base_url)

        def manage(*command: str) -> str:
            done = subprocess.run(
                [sys.executable, "manage.py", *command], cwd=root, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)], check=True, env=env)
        manage("startapp", "customers")
        manage("startapp", "notes")
        (root / "customers" / "models.py").write_text(CUSTOMERS_MODELS)
        (root / "notes" / "models.py").write_text(readme_snippet("model"))
        site = root / "mysite" / "settings.py"
        site.write_text(
            site.read_text()
            + TENANT_SETTINGS
            + "\n"
            + readme_snippet("tenants")
            + 'SEMANTIC["BASE_URL"] = os.environ["ADOPT_GEMINI_URL"]\n'
            + "DEBUG = False\n"  # as in production: no statement log (its 9,000 entries would also cap the count)
            + f"TENANT_LIMIT_SET_CALLS = {args.limit_set_calls}\n"
        )
        manage("makemigrations", "customers", "notes")
        manage("migrate_schemas", "--shared")
        names = [f"t{n:03d}" for n in range(args.tenants)]
        manage(
            "shell",
            "-c",
            "from customers.models import Client\nfor name in %r:\n    Client(schema_name=name, name=name).save()"
            % names,
        )
        rows = ", ".join(f"('Note {i}', 'Body of note {i}.')" for i in range(args.rows))
        with psycopg.connect(dbname=database, autocommit=True, **{k: v for k, v in server.items() if v}) as conn:
            for name in names:
                conn.execute(f'INSERT INTO "{name}".notes_note (title, body) VALUES {rows}')
        limit = f"TENANT_LIMIT_SET_CALLS {args.limit_set_calls}"
        print(f"{args.tenants} tenants x {args.rows} notes, {limit}, {RUNS} runs, medians")
        print(manage("shell", "-c", MEASURE.format(runs=RUNS)).split("\n", 1)[-1].strip())
    with psycopg.connect(dbname="postgres", autocommit=True, **{k: v for k, v in server.items() if v}) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
