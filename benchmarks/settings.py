"""Settings for benchmark runs and their workers: the test settings, with the backend
chosen by SEMANTIC_BENCH_BACKEND ("local" or "gemini", the fake server at
SEMANTIC_TEST_BASE_URL) and the local runtime by SEMANTIC_BENCH_RUNTIME."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import SEMANTIC

if os.environ.get("SEMANTIC_BENCH_BACKEND", "local") == "local":
    SEMANTIC = {**SEMANTIC, "BACKEND": "semantic.backends.local.LocalBackend", "SYNC": False}
else:
    SEMANTIC = {**SEMANTIC, "SYNC": False}
Q_CLUSTER = {"name": "semantic-bench", "orm": "default", "workers": 2, "timeout": 600, "retry": 700, "poll": 0.2}
# The test app holds fields sized for Gemini and for the local model side by side.
# SEMANTIC_BENCH_RUNTIME picks the local model's runtime ("auto", "onnx", "sentence-transformers").
if os.environ.get("SEMANTIC_BENCH_RUNTIME"):
    SEMANTIC["BACKEND_OPTIONS"] = {
        **SEMANTIC.get("BACKEND_OPTIONS", {}),
        "runtime": os.environ["SEMANTIC_BENCH_RUNTIME"],
    }
SILENCED_SYSTEM_CHECKS = ["semantic.E003"]
