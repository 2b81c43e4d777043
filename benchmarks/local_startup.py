"""How long each runtime for the local model takes to be ready: import, load, first encode.

Each measurement is a fresh Python process (so nothing is imported yet), the runtimes
interleaved round by round so a change in the machine's load hits all of them alike:

- ``sentence-transformers``: ``SentenceTransformer(path).encode(...)``;
- ``transformers``: ``AutoTokenizer`` + ``AutoModel`` and mean pooling in PyTorch;
- ``onnxruntime``: ``tokenizers`` + ``onnxruntime`` on the cached graph
  (semantic/backends/local_onnx.py);
- ``LocalBackend``: the backend as the web process loads it (``runtime="auto"``, graph
  prepared), weights or graph SHA-256 check included.

Each process imports the app's package (``PRELUDE``) before the clock starts, as a
Django process has by the time it starts the warm-up.

Also prints the cumulative ``-X importtime`` of each runtime's top-level imports.
The graph is prepared first (``LocalBackend().prepare()``, in its own process).

    .venv/bin/python -m benchmarks.local_startup [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys

from benchmarks.common import BASE_DIR

SENTENCES = ["How do I reset my password?", "The train to Paris is late."]

CHILD = {
    "sentence-transformers": (
        "import sentence_transformers",
        "model = sentence_transformers.SentenceTransformer(PATH, device='cpu', local_files_only=True)",
        "model.encode(SENTENCES, normalize_embeddings=True)",
    ),
    "transformers": (
        "import torch, transformers",
        "tokenizer = transformers.AutoTokenizer.from_pretrained(PATH, local_files_only=True); "
        "model = transformers.AutoModel.from_pretrained(PATH, local_files_only=True).eval()",
        "batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors='pt')\n"
        "with torch.no_grad(): tokens = model(**batch).last_hidden_state\n"
        "mask = batch['attention_mask'].unsqueeze(-1).float()\n"
        "torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9))",
    ),
    "onnxruntime": (
        "import onnxruntime, tokenizers; from semantic.backends import local_onnx",
        "model = local_onnx.OnnxEncoder(Path(PATH), Path(GRAPH))",
        "model.encode(SENTENCES)",
    ),
    "LocalBackend": (
        "from semantic.backends.local import LocalBackend",
        "model = LocalBackend().load()",
        "model.encode(SENTENCES, normalize_embeddings=True)",
    ),
}

#: Imported before the clock starts, as a Django process has by the time it warms up: Django,
#: numpy and the app (whose package imports the ORM layer) are no part of a runtime's cost.
PRELUDE = "import semantic.backends"

TEMPLATE = (
    PRELUDE
    + """
import time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
from pathlib import Path
PATH, GRAPH, SENTENCES = {path!r}, {graph!r}, {sentences!r}
{load}
t2 = time.perf_counter()
{encode}
t3 = time.perf_counter()
import json, sys
print(json.dumps({{"import": t1 - t0, "load": t2 - t1, "encode": t3 - t2, "torch": "torch" in sys.modules}}))
"""
)


def child_code(runtime: str, path: str, graph: str) -> str:
    imports, load, encode = CHILD[runtime]
    return TEMPLATE.format(imports=imports, load=load, encode=encode, path=path, graph=graph, sentences=SENTENCES)


def run(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=BASE_DIR, capture_output=True, text=True, check=True, timeout=600
    )


def import_seconds(statement: str) -> float:
    """Cumulative -X importtime of the modules the statement imports after the prelude, in seconds."""
    stderr = run(f"{PRELUDE}\nimport sys\nsys.stderr.write('MARK\\n')\n{statement}", "-X", "importtime").stderr
    total = 0
    for line in stderr.split("MARK\n", 1)[1].splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match[2]) == 1:
            total += int(match[1])
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prepared = run(
        "from semantic.backends.local import LocalBackend; b = LocalBackend(); "
        "print(b.model_path()); print(b.prepare()[0])"
    ).stdout.split()
    path, graph = prepared[-2], prepared[-1]

    print(f"-X importtime, cumulative, of the modules imported after `{PRELUDE}` (s):")
    for runtime, (imports, _, _) in CHILD.items():
        print(f"  {runtime:<22} {imports:<70} {import_seconds(imports):6.2f}")

    results: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in CHILD}
    for _ in range(args.rounds):
        for runtime in CHILD:
            results[runtime].append(json.loads(run(child_code(runtime, path, graph)).stdout.splitlines()[-1]))
    print(f"\nwall time, median of {args.rounds} fresh processes (s): import, load, first encode, total")
    for runtime, rows in results.items():
        parts = [statistics.median(row[part] for row in rows) for part in ("import", "load", "encode")]
        totals = [row["import"] + row["load"] + row["encode"] for row in rows]
        spread = f"{min(totals):.2f}-{max(totals):.2f}"
        torch = "imports torch" if rows[0]["torch"] else "no torch"
        print(f"  {runtime:<22} {parts[0]:6.2f} {parts[1]:6.2f} {parts[2]:6.2f}  {statistics.median(totals):6.2f}")
        print(f"  {'':<22} totals {spread}, {torch}")


if __name__ == "__main__":
    main()
