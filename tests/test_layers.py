"""Imports flow one way: every module of the app imports only modules below it.

The order is the architecture (../shared/STYLE.md): settings, text and the app's
tables at the bottom; backends, the field and row state; dispatch and the save hook;
the worker and the Batch API flow; the read path, the backfill and status; admin,
checks and commands at the top. Imports inside functions count too: a circle hidden
in a function is still a circle. A new module must be given its place here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "semantic"

LAYERS = [
    # settings, text, the app's tables
    "semantic.conf",
    "semantic.text",
    "semantic.passages",
    "semantic.models",
    "semantic.operations",
    "semantic.tenancy",
    # backends
    "semantic.backends.base",
    "semantic.backends.local_export",
    "semantic.backends.local_onnx",
    "semantic.backends.local",
    "semantic.backends.gemini_client",
    "semantic.backends.gemini",
    "semantic.backends",
    "semantic.ratelimit",
    "semantic.warmup",
    # the field, its registry, its indexes, row state
    "semantic.indexes",
    "semantic.expressions",
    "semantic.field_text",
    "semantic.companions",
    "semantic.fields",
    "semantic.spec_column",
    "semantic.registry",
    "semantic.schema",
    "semantic.sized_columns",
    "semantic.rows",
    "semantic.passage_rows",
    "semantic.switch",
    "semantic.definitions",
    "semantic.migration_hooks",
    "semantic.migration_plan",
    "semantic.labels",
    "semantic.streaming",
    # hand-off to the worker
    "semantic.dispatch",
    "semantic.hooks",
    "semantic.relation_hooks",
    "semantic.bulk",
    "semantic.passage_worker",
    "semantic.writer",
    # the worker and the Batch API flow
    "semantic.running_task",
    "semantic.claims",
    "semantic.embedder",
    "semantic.batch_collect",
    "semantic.batch",
    "semantic.tasks",
    # the read path, the backfill, status
    "semantic.vectors",
    "semantic.query_vectors",
    "semantic.duplicates",
    "semantic.review",
    "semantic.search_arguments",
    "semantic.search_plan",
    "semantic.passage_search",
    "semantic.query",
    "semantic.keyword_index",
    "semantic.keyword",
    "semantic.hybrid",
    "semantic.context",
    "semantic.evaluate",
    "semantic.linear",
    "semantic.classify",
    "semantic.clusters",
    "semantic.backfill",
    "semantic.status",
    "semantic.stale",
    # admin, checks, commands, the app
    "semantic.admin_access",
    "semantic.admin_changelist",
    "semantic.admin_status",
    "semantic.admin_dismissed",
    "semantic.admin_selection",
    "semantic.admin_compare",
    "semantic.admin_duplicates",
    "semantic.admin_labels",
    "semantic.admin_topics",
    "semantic.admin_search",
    "semantic.admin",
    "semantic.database_checks",
    "semantic.checks",
    "semantic.model_checks",
    "semantic.management",
    "semantic.management.output",
    "semantic.management.targets",
    "semantic.management.commands",
    "semantic.apps",
    "semantic",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(name: str) -> int:
    """A module's place; commands share one (they never import each other)."""
    if name.startswith("semantic.management.commands."):
        name = "semantic.management.commands"
    return LAYERS.index(name)


def imported(path: Path) -> set[str]:
    """The app's modules a file imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("semantic"):
            for alias in node.names:
                # "from semantic import ratelimit" names a module; "from semantic import embed" may too.
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in LAYERS else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("semantic"))
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def test_every_module_has_a_place():
    missing = sorted(
        name for name in modules() if not name.startswith("semantic.management.commands.") and name not in LAYERS
    )
    assert missing == [], "give these modules a place in LAYERS"


def test_imports_flow_downward_only():
    upward = []
    for name, path in modules().items():
        for target in imported(path):
            if target != name and target in LAYERS and rank(target) >= rank(name):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from semantic.admin import SemanticAdminMixin\n")
    assert imported(source) == {"semantic.admin"}
