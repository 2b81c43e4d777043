"""Schemas per tenant (django-tenants), in a project of its own, with a real worker.

A throwaway project on django-tenants' backend gets the README's "Schemas per tenant"
settings, as printed, and the README's model in a tenant app; two tenants each save six
notes under the same primary keys, and one ``qcluster`` worker, whose connection starts in
the public schema, must embed every one of them in its own schema. Rows written behind the
ORM's back in each schema are the sweep's.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.test_adoption import NOTES, Project, readme_snippet, server_params, started_project

TENANTS = ("alpha", "beta")

CUSTOMERS_MODELS = """from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    name = models.CharField(max_length=100)


class Domain(DomainMixin):
    pass
"""

#: django-tenants' backend, router, middleware and models, on the test's server.
TENANT_BACKEND = """
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
MIDDLEWARE = ["django_tenants.middleware.main.TenantMainMiddleware", *MIDDLEWARE]
DATABASES = {"default": {
    "ENGINE": "django_tenants.postgresql_backend",
    "NAME": os.environ["ADOPT_DB_NAME"], "HOST": os.environ["ADOPT_DB_HOST"],
    "USER": os.environ["ADOPT_DB_USER"], "PORT": os.environ["ADOPT_DB_PORT"],
}}
"""

#: The project as it was before this app: django-tenants' own settings, and the tenants' app.
TENANT_SETTINGS = (
    """
import os
SHARED_APPS = [
    "django_tenants",
    "customers",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
TENANT_APPS = ["django.contrib.contenttypes", "notes"]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]
"""
    + TENANT_BACKEND
)

#: Saves in each tenant's schema, the same primary keys in both (django-tenants' tenant_command
#: would do one tenant per run; the loop is the same calls).
SAVE_NOTES = """
from django_tenants.utils import schema_context
from notes.models import Note
for schema in {tenants!r}:
    with schema_context(schema):
        for title, body in {notes!r}:
            Note.objects.create(title=title, body=body)
"""

#: Two runs at once, one per tenant, each claiming rows 1-6 of its own schema: advisory locks are
#: the database's, so a lock named by the field alone would let only the first run take them.
CLAIM_BOTH = """
import threading
from django.db import connection
from django_tenants.utils import schema_context
from notes.models import Note
from semantic.registry import get_embedding_field
from semantic.embedder import Embedder

def claim(schema):
    with schema_context(schema):
        embedder = Embedder(Note, get_embedding_field(Note, "embedding"))
        return embedder.claim(list(Note.objects.order_by("pk")))

held = claim("alpha")
other = []
thread = threading.Thread(target=lambda: other.append(claim("beta")))
thread.start()
thread.join()
print("taken", len(held), len(other[0]))
"""


SWEEP = "from semantic.tasks import sweep\nprint(sorted(sweep()))"

NOT_CREATED_YET = """
from customers.models import Client
tenant = Client(schema_name="later", name="later")
tenant.auto_create_schema = False
tenant.save()
"""

#: A tenant's schema as django-tenants leaves it while it creates it: made, and the migrations of the
#: apps that sort before ``semantic`` applied (``migrate_schemas --schema=half notes`` stops there).
HALF_CREATED = """
from django.db import connection
from customers.models import Client
tenant = Client(schema_name="half", name="half")
tenant.auto_create_schema = False
tenant.save()
connection.cursor().execute('CREATE SCHEMA "half"')
"""

QUEUED_IN_HALF = """
import logging, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
from semantic.tasks import in_schema
print("returned", in_schema("half", "default", "semantic.tasks.embed_field", "notes.Note", "embedding"))
"""

#: The public schema's tenant row, as django-tenants' setup makes it (for the public site's domain).
PUBLIC_TENANT = "from customers.models import Client\nClient(schema_name='public', name='public').save()"

SEARCH_EACH = """
from django_tenants.utils import schema_context
from customers.models import Client
from notes.models import Note
for schema in ("alpha", "beta", "alpha"):
    Client.objects.get(schema_name=schema)  # as django-tenants' middleware finds the tenant, in public
    with schema_context(schema):
        print(schema, [note.title for note in Note.objects.similar_to("forgotten password")[:1]])
"""

BATCH_IN_PUBLIC = """
from semantic import batch
try:
    batch.run("notes.Note", "embedding")
except ValueError as error:
    print(error)
"""

#: Every note pending again, in each tenant's schema.
RESET = """
from django_tenants.utils import schema_context
from notes.models import Note
for schema in {tenants!r}:
    with schema_context(schema):
        Note.objects.update(embedding=None, embedding_embedded_hash=None)
"""

DROPPED_TASK = """
import logging, sys
logging.basicConfig(stream=sys.stdout, format="%(message)s")
from semantic.tasks import in_schema
print("returned", in_schema("gone", "default", "semantic.tasks.embed_field", "notes.Note", "embedding"))
"""


class TenantProject(Project):
    def counts(self, schema: str) -> tuple[int, int]:
        (row,) = self.sql(
            "SELECT count(*), count(*) FILTER (WHERE embedding IS NOT NULL AND embedding_embedded_hash IS NOT NULL) "
            f'FROM "{schema}".notes_note'
        )
        return row


@contextmanager
def new_database() -> Iterator[str]:
    """A database of its own for a project, dropped after the block."""
    database = f"tenants_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**server_params("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        yield database
    finally:
        with psycopg.connect(**server_params("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def tenants_site(tmp_path: Path, database: str, fake_gemini) -> TenantProject:
    """A django-tenants project with the README's settings and model, not migrated yet."""
    project = started_project(TenantProject, tmp_path / database, database, "test-key-tenants", fake_gemini.base_url)
    project.manage("startapp", "customers")
    project.manage("startapp", "notes")
    project.write("customers/models.py", CUSTOMERS_MODELS)
    settings = project.root / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + TENANT_SETTINGS + "\n" + readme_snippet("tenants"))
    # This machine reaches Gemini through the tests' fake server; a limit makes requests counted.
    settings.write_text(
        settings.read_text()
        + 'SEMANTIC["BASE_URL"] = os.environ["ADOPT_GEMINI_URL"]\nSEMANTIC["REQUESTS_PER_MINUTE"] = 1000\n'
    )
    project.write("notes/models.py", readme_snippet("model"))
    return project


@pytest.fixture
def tenant_project(tmp_path: Path, fake_gemini) -> Iterator[TenantProject]:
    """A django-tenants project with the README's settings, and the tenants alpha and beta."""
    with new_database() as database:
        project = tenants_site(tmp_path, database, fake_gemini)
        project.manage("makemigrations", "customers", "notes")
        project.manage("migrate_schemas", "--shared")
        project.manage(
            "shell",
            "-c",
            "from customers.models import Client\n"
            + "".join(f"Client(schema_name={name!r}, name={name!r}).save()\n" for name in TENANTS),
        )
        yield project


def until(condition, *, limit: float = 120.0) -> None:
    """Wait for a state the worker brings about (the limit only bounds a failing test)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "the worker did not get there"
        time.sleep(0.2)


@pytest.mark.django_db
def test_a_worker_embeds_each_tenants_rows_in_its_own_schema(tenant_project):
    project = tenant_project
    project.manage("shell", "-c", SAVE_NOTES.format(tenants=TENANTS, notes=NOTES))
    assert [project.counts(schema) for schema in TENANTS] == [(len(NOTES), 0)] * 2
    # What the saves queued names each tenant's schema: the worker starts in the public one.
    assert project.sql("SELECT count(*) FROM public.django_q_ormq") == [(2,)]
    # So do a command's tasks, run in one tenant's schema.
    assert "queued 6 rows as 1 django-q2 tasks" in project.manage(
        "tenant_command", "semantic_embed", "--schema=beta", "--queue"
    )
    assert project.sql("SELECT count(*) FROM public.django_q_ormq") == [(3,)]

    log = project.root / "qcluster.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=project.root,
            env=project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        # Each task is logged once done, as processed or failed (after django-q2 took it off the queue).
        until(lambda: sum(log.read_text().count(word) for word in ("Processed '", "Failed '")) >= 3)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    text = log.read_text()
    assert text.count("Processed 'semantic.tasks.in_schema'") == 3, text
    assert [project.counts(schema) for schema in TENANTS] == [(len(NOTES), len(NOTES))] * 2
    assert project.sql("SELECT count(*) FROM public.django_q_task WHERE NOT success") == [(0,)]
    # Each tenant's own bookkeeping: nothing of theirs in the public schema's tables.
    assert project.sql("SELECT count(*) FROM public.semantic_embeddingfailure") == [(0,)]


@pytest.mark.django_db
def test_the_sweep_visits_every_tenants_schema(tenant_project, fake_gemini):
    project = tenant_project
    for schema in TENANTS:
        rows = ", ".join(f"('{title}', '{body}')" for title, body in NOTES)
        project.sql(f'INSERT INTO "{schema}".notes_note (title, body) VALUES {rows}')
    project.sql("INSERT INTO beta.notes_note (title, body) VALUES ('REJECTME', 'a text the API refuses')")
    fake_gemini.reject_marker = "REJECTME"
    # A tenant whose schema django-tenants has not created yet: nothing there to sweep, nothing to say.
    project.manage("shell", "-c", NOT_CREATED_YET)
    out = project.output("shell", "-c", SWEEP)
    assert "['alpha:notes.Note.embedding', 'beta:notes.Note.embedding']" in out, out
    assert [project.counts(schema) for schema in TENANTS] == [(len(NOTES), len(NOTES)), (len(NOTES) + 1, len(NOTES))]
    # Log lines name the tenant whose rows they are about.
    (failed,) = [line for line in out.splitlines() if "failed" in line and "notes.Note.embedding" in line]
    assert failed.startswith("[beta] "), out
    assert "Sweep skipped" not in out and "later" not in out, out
    # A tenant's schema half made: its tables would be the public schema's, next on the search_path.
    project.manage("shell", "-c", HALF_CREATED)
    project.manage("migrate_schemas", "--schema=half", "notes")
    project.sql("INSERT INTO half.notes_note (title, body) VALUES ('REJECTME', 'a text the API refuses')")
    out = project.output("shell", "-c", SWEEP)
    assert "['alpha:notes.Note.embedding', 'beta:notes.Note.embedding']" in out, out
    out = project.output("shell", "-c", QUEUED_IN_HALF)
    assert "[half] Left the task semantic.tasks.embed_field queued in the schema 'half' to the sweep" in out, out
    assert "returned {}" in out and project.counts("half") == (1, 0), out
    assert project.sql("SELECT count(*) FROM public.semantic_embeddingfailure") == [(0,)]
    project.manage("migrate_schemas", "--schema=half")
    out = project.output("shell", "-c", SWEEP)
    assert "['alpha:notes.Note.embedding', 'beta:notes.Note.embedding', 'half:notes.Note.embedding']" in out, out
    assert project.sql("SELECT count(*) FROM half.semantic_embeddingfailure") == [(1,)]
    assert project.sql("SELECT count(*) FROM public.semantic_embeddingfailure") == [(0,)]
    # Every request, whichever tenant's rows it carried, counted against the key they share, in the public schema.
    sent = fake_gemini.request_count
    assert sent > 2 and project.sql("SELECT sum(requests) FROM public.semantic_ratelimit") == [(sent,)]
    for schema in TENANTS:
        assert project.sql(f'SELECT count(*) FROM "{schema}".semantic_ratelimit') == [(0,)]
    # The README's search in a tenant's schema: its text is counted in the public schema, and the
    # search runs in the tenant's.
    out = project.manage("tenant_command", "shell", "--schema=alpha", "-c", readme_snippet("search"))
    assert re.findall(r"^-?\d\.\d\d  (.+)$", out, re.M)[0] == "Reset a forgotten password", out
    assert project.sql("SELECT sum(requests) FROM public.semantic_ratelimit") == [(sent + 1,)]
    # The same text again in each schema, its vector from the cache: the search's first statement
    # is then django-tenants' SET search_path, sent through Django's cursor wrapper.
    out = project.manage("shell", "-c", SEARCH_EACH)
    assert re.findall(r"^(\w+) \['Reset a forgotten password'\]$", out, re.M) == ["alpha", "beta", "alpha"], out


@pytest.mark.django_db
def test_runs_in_two_tenants_take_rows_with_the_same_keys_at_once(tenant_project):
    project = tenant_project
    with psycopg.connect(**server_params(project.database), autocommit=True) as conn:
        for schema in TENANTS:
            conn.execute(
                f'INSERT INTO "{schema}".notes_note (title, body) SELECT t, t FROM unnest(%s::text[]) t',
                [[title for title, _ in NOTES]],
            )
    out = project.manage("shell", "-c", textwrap.dedent(CLAIM_BOTH))
    assert f"taken {len(NOTES)} {len(NOTES)}" in out, out


@pytest.mark.django_db
def test_commands_run_in_each_tenants_schema_and_say_so_in_the_public_one(tenant_project):
    project = tenant_project
    project.manage("shell", "-c", SAVE_NOTES.format(tenants=TENANTS, notes=NOTES))
    # In the public schema the commands leave the tenants' rows alone, and say where they are.
    for command in (["semantic_status"], ["semantic_embed"], ["semantic_status", "notes.Note"]):
        out = project.output(*command)
        assert "notes.Note: the rows are in each tenant's schema" in out and "all_tenants_command" in out, out
        assert "No model has" not in out and "embedded" not in out, out
    assert [project.counts(schema) for schema in TENANTS] == [(len(NOTES), 0)] * 2
    # So does --switch, named with its one field (all_tenants_command goes on past the public schema).
    out = project.output("semantic_embed", "notes.Note.embedding", "--switch")
    assert "notes.Note: the rows are in each tenant's schema" in out and "--switch takes" not in out, out
    refused = project.refused("semantic_search", "notes.Note", "password")
    assert "the rows are in each tenant's schema" in refused and "all_tenants_command --no-public <command>" in refused

    out = project.manage("all_tenants_command", "semantic_embed")
    assert out.count(f"{len(NOTES)} embedded") == 2, out
    assert [project.counts(schema) for schema in TENANTS] == [(len(NOTES), len(NOTES))] * 2
    status = project.manage("tenant_command", "semantic_status", "--schema=beta")
    assert re.search(rf"^notes\.Note\.embedding\s+{len(NOTES)}\s+{len(NOTES)}\s+0\s", status, re.M), status

    # The Batch API: its scheduled run refuses in the public schema, the command runs in each tenant's.
    batch = project.output("shell", "-c", BATCH_IN_PUBLIC)
    assert "notes.Note's rows are not in the schema this ran in" in batch and "all_tenants_command" in batch
    project.manage("shell", "-c", "from django.db import connection\n" + RESET.format(tenants=TENANTS))
    out = project.output("all_tenants_command", "semantic_embed", "notes.Note", "--batch-api", "--poll-interval=0.05")
    assert [project.counts(schema) for schema in TENANTS] == [(len(NOTES), len(NOTES))] * 2, out
    assert project.sql("SELECT count(*) FROM alpha.semantic_embeddingbatchjob") == [(1,)]

    # A task queued in the schema of a tenant deleted since is dropped, saying why, not retried.
    dropped = project.manage("shell", "-c", DROPPED_TASK)
    gone = "[gone] Dropped the task semantic.tasks.embed_field queued in the schema 'gone': no tenant"
    assert gone in dropped, dropped
    assert "returned {}" in dropped

    # The advice of a command that stops in the public schema, as given, with the public schema's
    # tenant that django-tenants' setup makes (all_tenants_command would visit it first and stop).
    project.manage("shell", "-c", PUBLIC_TENANT)
    out = project.manage("all_tenants_command", "--no-public", "semantic_search", "notes.Note", "password")
    assert re.findall(r"^Applying command to: (\w+)\n.*\n\s+\d\.\d+\s+#1\s", out, re.M) == ["alpha", "beta"], out


NOTE_ADMIN = """from django.contrib import admin

from semantic.admin import SemanticAdminMixin

from .models import Note


@admin.register(Note)
class NoteAdmin(SemanticAdminMixin, admin.ModelAdmin):
    list_display = ["title"]
"""

#: The admin through django-tenants' middleware: the public site and a tenant's, by host name.
BROWSE_ADMIN = """
from django.contrib.auth.models import User
from django.test import Client as Browser
from customers.models import Client, Domain
public = Client(schema_name="public", name="public")
public.save()
Domain(domain="public.localhost", tenant=public, is_primary=True).save()
Domain(domain="alpha.localhost", tenant=Client.objects.get(schema_name="alpha"), is_primary=True).save()
user = User.objects.create_superuser("admin", "admin@example.com", "admin")
pages = ["/admin/semantic/embeddingfailure/status/", "/admin/semantic/embeddingfailure/"]
for host, urls in (("public.localhost", pages), ("alpha.localhost", [*pages, "/admin/notes/note/duplicates/"])):
    browser = Browser(HTTP_HOST=host)
    browser.force_login(user)
    for url in urls:
        print(host, url, browser.get(url).status_code)
similar = browser.post("/admin/notes/note/", {"action": "find_similar", "_selected_action": [1]})
print("find similar", similar.status_code, similar.content.decode().count("Note object ("))
# Duplicate review in each tenant, alpha's first: only alpha has a pair, and its pairs are kept in the cache.
Domain(domain="beta.localhost", tenant=Client.objects.get(schema_name="beta"), is_primary=True).save()
for host in ("alpha.localhost", "beta.localhost"):
    browser = Browser(HTTP_HOST=host)
    browser.force_login(user)
    page = browser.get("/admin/notes/note/duplicates/").content.decode()
    print(host, "duplicate groups", page.count(" similar rows, similarity"))
# A tenant model's failure record in the public schema (a tenant deleted mid-run, before that was
# caught): the public site's "retry failed rows" leaves it, its rows are in no table there.
from django.db import connection
from semantic.models import EmbeddingFailure
connection.set_schema_to_public()  # the requests before left it in beta's
EmbeddingFailure.objects.create(model_label="notes.Note", field_name="embedding", object_pk="1", error="left")
browser = Browser(HTTP_HOST="public.localhost")
browser.force_login(user)
print("public retry", browser.post("/admin/semantic/embeddingfailure/status/").status_code)
"""


#: Duplicates found by two threads, each on a connection of its own (a new one starts in the public schema).
DUPLICATES_IN_THREADS = """
from django_tenants.utils import schema_context
from notes.models import Note
with schema_context("alpha"):
    print("pairs", [(a.pk, b.pk) for a, b, _ in Note.objects.duplicates(workers=2)])
"""


@pytest.mark.django_db
def test_the_admin_pages_work_on_the_public_site_and_a_tenants(tenant_project):
    project = tenant_project
    project.write("notes/admin.py", NOTE_ADMIN)
    project.manage("shell", "-c", SAVE_NOTES.format(tenants=TENANTS, notes=NOTES))
    # A seventh note in each: in alpha the first one's duplicate, in beta a note of its own.
    project.manage("shell", "-c", SAVE_NOTES.format(tenants=["alpha"], notes=NOTES[:1]))
    project.manage("shell", "-c", SAVE_NOTES.format(tenants=["beta"], notes=[("Opera tickets", "Two for Saturday.")]))
    project.manage("all_tenants_command", "semantic_embed")
    out = project.manage("shell", "-c", BROWSE_ADMIN)
    assert "alpha.localhost duplicate groups 1" in out and "beta.localhost duplicate groups 0" in out, out
    pages = re.findall(r"^(\S+localhost) (\S+) (\d+)$", out, re.M)
    assert len(pages) == 5 and {status for _, _, status in pages} == {"200"}, out
    # The row itself and its five neighbours in its tenant's schema.
    assert f"find similar 200 {len(NOTES)}" in out, out
    assert "public retry 302" in out, out
    out = project.manage("shell", "-c", DUPLICATES_IN_THREADS)
    assert f"pairs [(1, {len(NOTES) + 1})]" in out, out


@pytest.mark.django_db
def test_a_tenant_deleted_while_its_rows_are_embedded_leaves_nothing_in_the_public_schema(tenant_project, fake_gemini):
    project = tenant_project
    rows = ", ".join(f"('{title}', '{body}')" for title, body in NOTES)
    project.sql(f"INSERT INTO alpha.notes_note (title, body) VALUES {rows}")

    def delete_alpha(record):
        # django-tenants' delete() of a tenant with auto_drop_schema, while the API answers.
        fake_gemini.on_request = None
        with psycopg.connect(**server_params(project.database), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")
            conn.execute("DELETE FROM public.customers_client WHERE schema_name = 'alpha'")
            conn.execute("DROP SCHEMA alpha CASCADE")

    fake_gemini.on_request = delete_alpha
    out = project.output("shell", "-c", SWEEP)
    assert "[alpha] Embedding notes.Note.embedding stopped: the tenant schema 'alpha' was dropped" in out, out
    assert project.sql("SELECT count(*) FROM public.semantic_embeddingfailure") == [(0,)]
    assert project.sql("SELECT count(*) FROM public.semantic_passage") == [(0,)]


#: A long note: each paragraph a passage of its own at the sizes below.
LONG_BODY = "\n\n".join(
    f"Paragraph {n}: " + " ".join(f"{topic} needs care number {i}." for i in range(5))
    for n, topic in enumerate(["The invoice export", "The password reset", "The dark mode", "The phone code"])
)

SEARCH_PASSAGES = """
from notes.models import Note
row = Note.objects.similar_to("password reset", passages=True).first()
print("best", row.title, row.passage_position, "Paragraph 1: The password reset" in row.passage_text)
"""


@pytest.mark.django_db
def test_passages_are_cut_embedded_and_searched_in_each_tenants_schema(tenant_project):
    project = tenant_project
    project.edit_model("from semantic import EmbeddingField", "from semantic import EmbeddingField, Passages")
    project.edit_model(
        'EmbeddingField(source=("title", "body"))',
        'EmbeddingField(source="body", title_source="title", task_type="RETRIEVAL_DOCUMENT", '
        "passages=Passages(max_chars=300, overlap=30))",
    )
    project.manage("makemigrations", "notes")
    project.manage("migrate_schemas")
    project.manage("shell", "-c", SAVE_NOTES.format(tenants=TENANTS, notes=[("Long", LONG_BODY), *NOTES]))
    out = project.manage("shell", "-c", "from semantic.tasks import sweep\nprint(sweep())")
    for schema in TENANTS:
        assert f"'{schema}:notes.Note.embedding'" in out, out
        passages = project.sql(f'SELECT count(*), count(vector) FROM "{schema}".semantic_passage')
        assert passages == [(4 + len(NOTES),) * 2], (schema, passages, out)  # the long note has four
    assert project.sql("SELECT count(*) FROM public.semantic_passage") == [(0,)]
    found = project.manage("tenant_command", "shell", "--schema=beta", "-c", SEARCH_PASSAGES)
    assert "best Long 1 True" in found, found


DELETE_PRODUCT = """
from django_tenants.utils import schema_context
from catalog.models import Product
with schema_context("alpha"):
    Product.objects.get().delete()
"""

BATCH_SHARED = """
from django_tenants.utils import schema_context
from semantic import batch
with schema_context("alpha"):
    print("jobs", len(batch.run("catalog.Product", "embedding", everything=True, poll_interval=0.05)))
"""

PRODUCT_MODEL = """from django.db import models

from semantic import EmbeddingField, SemanticManager


class Product(models.Model):
    name = models.CharField(max_length=200)
    embedding = EmbeddingField(source="name", passages=True)

    objects = SemanticManager()
"""

#: A shared app's row saved in a tenant's schema (a tenant's request), and what that queued.
SAVE_PRODUCT = """
from django_q.models import OrmQ
from django_tenants.utils import schema_context
from catalog.models import Product
with schema_context("alpha"):
    Product.objects.create(name="Password manager")
print("queued", [(task.task["func"], list(task.task["args"])) for task in OrmQ.objects.all()])
"""


@pytest.mark.django_db
def test_a_shared_apps_rows_are_embedded_once_in_the_public_schema(tenant_project):
    project = tenant_project
    project.manage("startapp", "catalog")
    project.write("catalog/models.py", PRODUCT_MODEL)
    settings = project.root / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + 'SHARED_APPS += ["catalog"]\n'
        + "INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]\n"
    )
    project.manage("makemigrations", "catalog")
    project.manage("migrate_schemas", "--shared")

    out = project.manage("shell", "-c", SAVE_PRODUCT)
    queued = "('semantic.tasks.in_schema', ['public', 'default', 'semantic.tasks.embed_field', 'catalog.Product'"
    assert queued in out, out
    # The sweep, from a connection that a project's own task left in a tenant's schema, as a worker's may be.
    out = project.manage("shell", "-c", "from django.db import connection\nconnection.set_schema('alpha')\n" + SWEEP)
    assert "['alpha:notes.Note.embedding', 'beta:notes.Note.embedding', 'catalog.Product.embedding']" in out, out
    assert project.sql("SELECT count(*), count(embedding) FROM public.catalog_product") == [(1, 1)]
    # The Batch API for the shared model, called in a tenant's schema, works on the public schema's rows.
    out = project.output("shell", "-c", BATCH_SHARED)
    (jobs,) = re.findall(r"^jobs (\d+)$", out, re.M)
    assert int(jobs) > 0 and project.sql("SELECT count(*) FROM public.semantic_embeddingbatchjob") == [(int(jobs),)]
    out = project.output("tenant_command", "semantic_embed", "catalog.Product", "--all", "--schema=alpha")
    assert "catalog.Product: the rows are in the public schema (a shared app's), not in the tenant schema" in out
    assert "embedded" not in out, out

    project.manage("shell", "-c", SAVE_NOTES.format(tenants=TENANTS, notes=NOTES))
    # The public schema's tenant, as django-tenants' setup makes it: all_tenants_command visits it too.
    project.manage("shell", "-c", PUBLIC_TENANT)
    out = project.output("all_tenants_command", "semantic_embed", "--all")
    assert out.count("catalog.Product.embedding: 1 embedded") == 1, out
    # Deleted in a tenant's schema, the shared row's passage goes from the public schema.
    assert project.sql("SELECT count(*) FROM public.semantic_passage") == [(1,)]
    project.manage("shell", "-c", DELETE_PRODUCT)
    assert project.sql("SELECT count(*) FROM public.semantic_passage") == [(0,)]
    assert out.count(f"notes.Note.embedding: {len(NOTES)} embedded") == 2, out
    # Named, each model's rows are embedded in their own schema, and the other schemas say so.
    out = project.output("all_tenants_command", "semantic_embed", "notes.Note", "--all")
    assert out.count(f"notes.Note.embedding: {len(NOTES)} embedded") == 2, out
    assert out.count("notes.Note: the rows are in each tenant's schema") == 1, out


#: Tenants of two types (django-tenants' TENANT_TYPES): shops have notes, blogs do not.
MULTI_TYPE_SETTINGS = (
    """
import os
HAS_MULTI_TYPE_TENANTS = True
MULTI_TYPE_DATABASE_FIELD = "type"
_PUBLIC = ["django_tenants", "customers", "django.contrib.contenttypes", "django.contrib.auth", "django.contrib.admin",
           "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles"]
TENANT_TYPES = {
    "public": {"APPS": [*_PUBLIC, "django.contrib.postgres", "django_q", "semantic"], "URLCONF": "mysite.urls"},
    "shop": {"APPS": ["django.contrib.contenttypes", "semantic", "notes"], "URLCONF": "mysite.urls"},
    "blog": {"APPS": ["django.contrib.contenttypes"], "URLCONF": "mysite.urls"},
}
INSTALLED_APPS = list(dict.fromkeys(app for spec in TENANT_TYPES.values() for app in spec["APPS"]))
Q_CLUSTER = {"name": "mysite", "orm": "default", "workers": 1, "timeout": 300, "retry": 360}
SEMANTIC = {"BASE_URL": os.environ["ADOPT_GEMINI_URL"]}
"""
    + TENANT_BACKEND
)

TYPED_CUSTOMERS_MODELS = CUSTOMERS_MODELS.replace(
    "    name = models.CharField(max_length=100)\n",
    "    name = models.CharField(max_length=100)\n    type = models.CharField(max_length=100)\n",
)

#: A save in schema_context(), which points the connection by the schema's name alone (no type).
SAVE_IN_SHOP = """
from django_q.models import OrmQ
from django_tenants.utils import schema_context
from notes.models import Note
with schema_context("shop1"):
    Note.objects.create(title="Reset a forgotten password", body="Use the link on the sign-in page.")
print("queued", [list(task.task["args"][:3]) for task in OrmQ.objects.all()])
"""


@pytest.mark.django_db
def test_tenants_of_several_types_each_with_its_own_apps(tmp_path, fake_gemini):
    with new_database() as database:
        project = started_project(TenantProject, tmp_path / database, database, "test-key-types", fake_gemini.base_url)
        project.manage("startapp", "customers")
        project.manage("startapp", "notes")
        project.write("customers/models.py", TYPED_CUSTOMERS_MODELS)
        project.write("notes/models.py", readme_snippet("model"))
        settings = project.root / "mysite" / "settings.py"
        settings.write_text(settings.read_text() + MULTI_TYPE_SETTINGS)
        project.manage("makemigrations", "customers", "notes")
        project.manage("migrate_schemas", "--shared")
        tenants = [("shop1", "shop"), ("blog1", "blog")]
        project.manage(
            "shell",
            "-c",
            "from customers.models import Client\n"
            + "".join(f"Client(schema_name={name!r}, name={name!r}, type={kind!r}).save()\n" for name, kind in tenants),
        )
        assert "queued [['shop1', 'default', 'semantic.tasks.embed_field']]" in project.manage(
            "shell", "-c", SAVE_IN_SHOP
        )
        out = project.output("shell", "-c", SWEEP)
        assert "['shop1:notes.Note.embedding']" in out, out  # blogs have no notes
        assert project.counts("shop1") == (1, 1)
        out = project.output("tenant_command", "semantic_status", "notes.Note", "--schema=blog1")
        assert (
            "the tenant schema 'blog1' this command ran in has no table of them: their apps are other tenant types'"
            in out
        )
        out = project.manage("shell", "-c", REUSED_SCHEMA)
        assert re.findall(r"^shop1 has notes: (\w+)$", out, re.M) == ["True", "False"], out


#: A shop deleted and its schema's name given to a blog, in one long-lived process (a worker's).
REUSED_SCHEMA = """
from django_tenants.utils import schema_context
from customers.models import Client
from notes.models import Note
from semantic import tenancy
from semantic.tasks import in_schema
with schema_context("shop1"):
    print("shop1 has notes:", tenancy.has_table(Note, "default"))
Client.objects.get(schema_name="shop1").delete(force_drop=True)
Client(schema_name="shop1", name="shop1 again", type="blog").save()
in_schema("shop1", "default", "semantic.tasks.embed_pending")
with schema_context("shop1"):
    print("shop1 has notes:", tenancy.has_table(Note, "default"))
"""

#: SYNC, and saves in two tenants' schemas in one transaction: it commits in the public schema.
SYNC_SAVES = """
from django.conf import settings
from django.db import transaction
from django.test.utils import override_settings
from django_tenants.utils import schema_context
from notes.models import Note
with override_settings(SEMANTIC={**settings.SEMANTIC, "SYNC": True}), transaction.atomic():
    for schema in ("alpha", "beta"):
        with schema_context(schema):
            Note.objects.create(title="Export invoices", body="Every invoice of the year.")
"""


@pytest.mark.django_db
def test_sync_embeds_each_row_in_the_schema_that_saved_it(tenant_project):
    project = tenant_project
    project.manage("shell", "-c", SYNC_SAVES)
    assert [project.counts(schema) for schema in TENANTS] == [(1, 1)] * 2


@pytest.mark.django_db
def test_pgvector_in_a_schema_of_its_own_is_found_with_the_setting_the_check_names(tmp_path, fake_gemini):
    """django-tenants sets each connection's search_path itself: semantic.E012 names its setting,
    not the database options it advises without django-tenants."""
    with new_database() as database:
        with psycopg.connect(**server_params(database), autocommit=True) as conn:  # as managed services do
            conn.execute("CREATE SCHEMA extensions; CREATE EXTENSION vector SCHEMA extensions")
        project = tenants_site(tmp_path, database, fake_gemini)
        out = project.refused("check", "--database", "default")
        assert "semantic.E012" in out and "PG_EXTRA_SEARCH_PATHS = ['extensions']" in out and "OPTIONS" not in out
        settings = project.root / "mysite" / "settings.py"
        settings.write_text(settings.read_text() + "PG_EXTRA_SEARCH_PATHS = ['extensions']\n")
        project.manage("check", "--database", "default")
