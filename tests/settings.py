"""Settings for the test suite: the demo's database, a test app, and the Gemini
backend pointed at the fake server that tests start (see tests/conftest.py)."""

from pathlib import Path

from project.database import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_q",
    "simple_history",
    "semantic",
    "tests.testapp",
    "tests.topicapp",
    "tests.docsapp",
    "project.questions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": database_settings(),
    # A second database on the same server, for rows saved with .using("other").
    "other": {**database_settings(), "TEST": {"NAME": "test_semantic_other"}},
    # "default" again through connections of its own, as a read replica: tests that route
    # reads here make those connections read-only (a mirror takes default's OPTIONS).
    "replica": {**database_settings(), "TEST": {"MIRROR": "default"}},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

TEST_API_KEY = "AIzaTEST-do-not-leak-0123456789"

SEMANTIC = {
    "BACKEND": "semantic.backends.gemini.GeminiBackend",
    "API_KEY": TEST_API_KEY,
    "BASE_URL": "http://127.0.0.1:9",  # replaced by the fake_gemini fixture
    "SYNC": True,
    "BACKOFF": 0.01,
    "MAX_BACKOFF": 2.0,
    "TIMEOUT": 5.0,
}

Q_CLUSTER = {
    "name": "semantic-tests",
    "orm": "default",
    "workers": 1,
    "timeout": 60,
    "retry": 120,
    "poll": 0.1,
    "catch_up": False,
}

# Processes started by tests (a django-q2 worker, commands) join the test run's fake server.
import os  # noqa: E402

if os.environ.get("SEMANTIC_TEST_BASE_URL"):
    SEMANTIC["BASE_URL"] = os.environ["SEMANTIC_TEST_BASE_URL"]
if os.environ.get("SEMANTIC_TEST_MAX_BACKOFF"):
    SEMANTIC["MAX_BACKOFF"] = float(os.environ["SEMANTIC_TEST_MAX_BACKOFF"])
if os.environ.get("SEMANTIC_TEST_BATCH_SIZE"):
    SEMANTIC["BATCH_SIZE"] = int(os.environ["SEMANTIC_TEST_BATCH_SIZE"])
if os.environ.get("SEMANTIC_TEST_REQUESTS_PER_MINUTE"):
    SEMANTIC["REQUESTS_PER_MINUTE"] = int(os.environ["SEMANTIC_TEST_REQUESTS_PER_MINUTE"])
if os.environ.get("SEMANTIC_TEST_BACKEND"):
    SEMANTIC["BACKEND"] = os.environ["SEMANTIC_TEST_BACKEND"]
    # The test app holds fields sized for Gemini and for the local model side by side.
    SILENCED_SYSTEM_CHECKS = ["semantic.W004"]
