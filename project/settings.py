"""Settings for the django-semantic demo site. Not for production."""

import os
from pathlib import Path

from project.database import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_q",
    "semantic",
    "project.questions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

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
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {"default": database_settings()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en"
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "static"

# Without GEMINI_API_KEY the local model embeds; with it, Gemini. The demo field
# stores 384 dimensions, which both can produce, so the schema is the same either way.
SEMANTIC = {
    "SWEEP_MINUTES": 1,
}

Q_CLUSTER = {
    "name": "semantic-demo",
    "orm": "default",
    # Each worker process loads its own copy of the local model (about 600 MB).
    "workers": 1,
    "timeout": 300,
    "retry": 360,
    "poll": 0.5,
    "catch_up": False,
    "save_limit": 500,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "semantic": {"handlers": ["console"], "level": "INFO"},
        # django-q2 logs "Enqueued ..." at INFO on every save.
        "django-q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# The demo's search floor and "Did you mean…?" threshold per backend name default to
# those measured by `python -m benchmarks.demo_thresholds` (project/questions/relevance.py,
# docs/benchmarks.md). Gemini is not measured yet: run the script with --gemini and set
# DEMO_THRESHOLDS = {"gemini": {"min_similarity": ..., "did_you_mean": ...}}.
