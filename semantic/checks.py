"""System checks of the settings: configuration mistakes reported by ``manage.py check``.

Those of the project's models (their EmbeddingFields and KeywordIndexes) are in
:mod:`semantic.model_checks`; those that read a database (``check --database``) are in
:mod:`semantic.database_checks`.
"""

from __future__ import annotations

import sys
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks

from semantic import tenancy
from semantic.backends.gemini_client import sendable_key
from semantic.conf import GEMINI_BACKEND, REMOVED
from semantic.conf import semantic_settings as conf
from semantic.registry import embedding_fields
from semantic.running_task import STORE_SECONDS, TASK_TIME_HINT, task_time_problem

#: semantic.E015: the key as configured cannot be sent; it names the character, never the key.
KEY_UNSENDABLE = (
    "The Gemini API key holds a character an HTTP header cannot carry ({character}), so no request can be sent with it."
)
KEY_UNSENDABLE_HINT = (
    "Set GEMINI_API_KEY (or SEMANTIC['API_KEY']) to the key alone, as Google AI Studio shows it: "
    "quotes, spaces or other characters copied with it from a document are not part of it."
)


@checks.register()
def check_backend(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        backend_class = conf.BACKEND
    except ImportError as exc:
        return [
            checks.Error(
                str(exc),
                hint="Set SEMANTIC['BACKEND'] to an import string such as "
                f"'{GEMINI_BACKEND}', or remove it to choose automatically.",
                id="semantic.E001",
            )
        ]
    errors: list[checks.CheckMessage] = []
    if getattr(backend_class, "name", "") == "gemini" and not (conf.API_KEY or conf.BACKEND_OPTIONS.get("api_key")):
        errors.append(
            checks.Error(
                "The Gemini backend is selected but no API key is configured.",
                hint="Set the GEMINI_API_KEY environment variable (or SEMANTIC['API_KEY']), "
                "or remove SEMANTIC['BACKEND'] to use the local model.",
                id="semantic.E002",
            )
        )
    if getattr(backend_class, "name", "") == "gemini":
        errors += _check_key(conf.BACKEND_OPTIONS.get("api_key") or conf.API_KEY)
    if getattr(backend_class, "name", "") == "local":
        backend = backend_for_checks(backend_class, None)
        if backend is not None and (missing := backend.missing()):
            # A warning, as W004: a CI job without the key or the extra must still run
            # migrate and its tests; every run and search says the same until it is fixed.
            errors.append(checks.Warning(missing, id="semantic.W006"))
    for key, advice in REMOVED.items():
        if key in conf.user_settings:
            errors.append(checks.Warning(f"SEMANTIC[{key!r}] is no longer used.", hint=advice, id="semantic.W002"))
    if not conf.SYNC and not apps.is_installed("django_q"):
        errors.append(
            checks.Error(
                "django_q is not in INSTALLED_APPS, so nothing will run the embedding tasks.",
                hint="Add 'django_q' to INSTALLED_APPS and run 'manage.py qcluster', "
                "or set SEMANTIC['SYNC'] = True to embed inline.",
                id="semantic.E005",
            )
        )
    return errors


def _check_key(key: Any) -> list[checks.CheckMessage]:
    """A key pasted with typographic quotes fails before any request, in a way that looks like a network error."""
    key = key.strip() if isinstance(key, str) else ""  # as the backend reads it
    if not key or sendable_key(key):
        return []
    character = next(c for c in key if not sendable_key(c))
    return [
        checks.Error(
            KEY_UNSENDABLE.format(character=f"U+{ord(character):04X}"), hint=KEY_UNSENDABLE_HINT, id="semantic.E015"
        )
    ]


def backend_for_checks(backend_class: type, model: str | None) -> Any:
    try:
        return backend_class(model=model or conf.MODEL, **conf.BACKEND_OPTIONS)
    except Exception:
        return None


#: Shortest SEMANTIC['TIMEOUT'] (and SEARCH_TIMEOUT), in seconds.
MIN_TIMEOUT = 0.001
#: What each time-out setting bounds, for the hint.
TIMEOUTS = {
    "TIMEOUT": "one embedding request of the worker or a command may take (default 30.0)",
    "SEARCH_TIMEOUT": "one embedding request of a search may take while a web request waits (default 5.0; "
    "keep it well under the web server's own time-out)",
}


@checks.register()
def check_timeout(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The API client counts whole milliseconds and takes 0 for no time-out at all: the
    backend rounds a smaller value up to one millisecond, so the setting would not say
    what happens, and a value that is no positive number has no time-out to give."""
    errors = []
    for key, meaning in TIMEOUTS.items():
        timeout = getattr(conf, key)
        number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if number and MIN_TIMEOUT <= timeout < float("inf"):  # NaN fails both comparisons
            continue
        errors.append(
            checks.Error(
                f"SEMANTIC[{key!r}] is {timeout!r}; it must be a number of seconds, at least {MIN_TIMEOUT}.",
                hint=f"Set SEMANTIC[{key!r}] to the seconds {meaning}; "
                "the API client counts whole milliseconds, and smaller values are rounded up to one.",
                id="semantic.E009",
            )
        )
    return errors


@checks.register()
def check_topics_max_rows(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The Topics page groups a sample of this many rows: it takes a whole number, at least two
    (a group needs two rows); anything else would fail on the page, in a request."""
    value = conf.TOPICS_MAX_ROWS
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
        return []
    return [
        checks.Error(
            f"SEMANTIC['TOPICS_MAX_ROWS'] is {value!r}; it must be a whole number of rows, at least 2.",
            hint="Set it to how many rows the admin's Topics page may group in one request (default 10000).",
            id="semantic.E016",
        )
    ]


@checks.register()
def check_task_time(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A project's own shorter ``Q_CLUSTER["timeout"]`` (60 s is common) must still fit one request."""
    if not apps.is_installed("django_q") or check_timeout():
        return []
    problem = task_time_problem()
    if problem is None:
        return []
    hint = TASK_TIME_HINT.format(needed=f"{conf.TIMEOUT + STORE_SECONDS:g}")
    return [checks.Warning(problem, hint=hint, id="semantic.W008")]


#: semantic.W011: the worker about to fork with a pool of open connections.
POOL_IN_WORKER = (
    "DATABASES[{alias!r}] has OPTIONS['pool'] (Django's connection pool) in qcluster: django-q2 forks its "
    "processes, which would share the pool's open connections and read each other's results, so the worker's "
    "processes die again and again and saved rows are not embedded."
)
#: The lines W011's hint asks for, as the README gives them: on lines of their own, so that they
#: can be pasted into settings.py (an ``if`` cannot follow ``import sys;`` on one line).
POOL_IN_WORKER_FIX = 'import sys\n\nif "qcluster" in sys.argv:\n    DATABASES[{alias!r}]["OPTIONS"].pop("pool", None)'
POOL_IN_WORKER_HINT = (
    "Keep the pool for the web processes and drop it for the worker: in settings.py, after DATABASES, "
    "add these lines (README: Settings, Django's connection pool):\n\n" + POOL_IN_WORKER_FIX
)


@checks.register()
def check_worker_pool(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Only in the process that starts the worker: Django runs these checks as ``manage.py
    qcluster`` starts. A pool is right for the web processes, and settings can tell the worker
    apart only by its command line, as the README's fix does; ``manage.py check`` cannot know
    whether that fix is in place, so it says nothing rather than warn every project with a pool."""
    if "qcluster" not in sys.argv or not apps.is_installed("django_q"):
        return []
    return [
        checks.Warning(
            POOL_IN_WORKER.format(alias=alias), hint=POOL_IN_WORKER_HINT.format(alias=alias), id="semantic.W011"
        )
        for alias, database in settings.DATABASES.items()
        if (database.get("OPTIONS") or {}).get("pool")
    ]


#: semantic.E017: with schemas per tenant, the app's tables are needed in both kinds of schema.
TENANT_APPS_MISSING = (
    "'semantic' is not in {missing}: with schemas per tenant its tables are needed in the public schema "
    "(the rate limit all tenants share) and in each schema with a model that has an EmbeddingField "
    "(the rows' passages, failures and labels)."
)
TENANT_APPS_HINT = "Add 'semantic' to those lists, as the README's \"Schemas per tenant\" shows."
#: semantic.E018: django-q2's queue in a tenant's schema is a queue no worker reads.
QUEUE_PER_TENANT = (
    "'django_q' is in {lists}: each tenant's schema then has a queue of its own, which saves in that "
    "schema write their work to, and the worker, which reads the public schema's, never sees it."
)
QUEUE_PER_TENANT_HINT = "Keep 'django_q' in the public schema's apps only (SHARED_APPS)."


@checks.register()
def check_tenant_apps(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Schemas per tenant (django-tenants' ``SHARED_APPS`` and ``TENANT_APPS``, or ``TENANT_TYPES``):
    where the app and django-q2 must be for the worker to serve every tenant (:mod:`semantic.tenancy`)."""
    lists = tenancy.app_lists()
    embedded = {model._meta.app_label for model in apps.get_models() if embedding_fields(model)}
    missing = [
        setting
        for setting, names, public in lists
        if (public or any(tenancy.listed_app(label, names) for label in embedded))
        and not tenancy.listed_app("semantic", names)
    ]
    problems = []
    if missing:
        problems.append(
            checks.Error(
                TENANT_APPS_MISSING.format(missing=" and ".join(missing)), hint=TENANT_APPS_HINT, id="semantic.E017"
            )
        )
    queues = [setting for setting, names, public in lists if not public and tenancy.listed_app("django_q", names)]
    if queues:
        problems.append(
            checks.Error(
                QUEUE_PER_TENANT.format(lists=" and ".join(queues)), hint=QUEUE_PER_TENANT_HINT, id="semantic.E018"
            )
        )
    return problems
