import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys, django
django.setup()
import semantic, semantic.fields, semantic.tasks, semantic.embedder, semantic.checks, semantic.status
from semantic.backends import get_backend
from django.core import checks
checks.run_checks()
print(get_backend().name, "torch" in sys.modules, "sentence_transformers" in sys.modules)
"""


def test_gemini_projects_never_import_torch():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=BASE_DIR,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gemini", "False", "False"]
