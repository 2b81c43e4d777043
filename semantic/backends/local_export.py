"""The local model's ONNX graph: written once from the shipped weights, kept in a cache on disk.

Nothing is downloaded: the graph is traced from the installed safetensors weights with
PyTorch (``torch.onnx.export``), which takes seconds and needs PyTorch and
transformers, so it is an explicit step (``manage.py semantic_prepare_model``, run
by ``make demo``) rather than something a search could wait for.

The cache file is named after the source weights' SHA-256 and this export's format
version, so other weights or a changed export never reuse a stale graph. Beside it a
small manifest records the graph's own SHA-256: a graph that was truncated, edited or
half-written does not match, and counts as absent (``prepare`` writes it again). Both
files are written under temporary names and renamed into place, so a reader never
sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

#: Raised when the export itself changes, so graphs written by an older one are not reused.
FORMAT = 1
PROBE = ["A man is playing a guitar.", "Short.", "How do I reset my password if I no longer have my phone?"]


def cache_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """``configured`` if given, else ``$XDG_CACHE_HOME/django-semantic`` (``~/.cache/django-semantic``)."""
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "django-semantic"


def graph_path(root: Path, source_sha256: str) -> Path:
    return root / f"{source_sha256}.v{FORMAT}.onnx"


def cached_graph(root: Path, source_sha256: str) -> Path | None:
    """The cached graph for these weights, or None when it is missing or does not match its manifest."""
    graph = graph_path(root, source_sha256)
    try:
        recorded = json.loads(graph.with_suffix(".json").read_text())["sha256"]
        intact = file_sha256(graph) == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return graph if intact else None


def prepare(model_dir: Path, source_sha256: str, root: Path) -> tuple[Path, bool]:
    """The graph for these weights, exported unless an intact one is cached; and whether it was exported."""
    graph = cached_graph(root, source_sha256)
    if graph is not None:
        return graph, False
    graph = graph_path(root, source_sha256)
    export(model_dir, graph)
    return graph, True


def export(model_dir: Path, target: Path) -> None:
    """Trace the transformer to ``target`` and record its digest, both atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest = target.with_suffix(".json")
    temporary = [_temporary(target), _temporary(manifest)]
    try:
        _trace(model_dir, temporary[0])
        temporary[1].write_text(json.dumps({"sha256": file_sha256(temporary[0]), "source": str(model_dir)}))
        for path in temporary:
            path.chmod(0o644)
        os.replace(temporary[0], target)
        os.replace(temporary[1], manifest)
    finally:
        for path in temporary:
            with suppress(FileNotFoundError):
                path.unlink()


def _temporary(target: Path) -> Path:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    return Path(name)


def _trace(model_dir: Path, target: Path) -> None:
    """Export with the TorchScript tracer, on a padded batch so the attention mask's path is the one traced.

    The graph's output is the token vectors; pooling and normalisation stay in
    semantic/backends/local_onnx.py. tests/test_local_backend.py checks a batch of
    mixed lengths against sentence-transformers.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    with quiet_loading():
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    batch = tokenizer(PROBE, padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in batch]

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Tokens(),
            tuple(batch[name] for name in names),
            str(target),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' and huggingface_hub's progress bars and INFO lines while the model loads.

    Each process would otherwise print "Loading weights 0/103" into the user's console.
    Only libraries left at their default verbosity (WARNING) are quietened, so a project
    that asked for their INFO or DEBUG output keeps it; both are restored afterwards.
    """
    from huggingface_hub import utils as hub_utils
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    restore = []
    if transformers_logging.get_verbosity() >= logging.WARNING:
        level, bar = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        restore.append(lambda: transformers_logging.set_verbosity(level))
        if bar:
            restore.append(transformers_logging.enable_progress_bar)
    if hub_logging.get_verbosity() >= logging.WARNING:
        level, bars = hub_logging.get_verbosity(), not hub_utils.are_progress_bars_disabled()
        hub_logging.set_verbosity_error()
        hub_utils.disable_progress_bars()
        restore.append(lambda: hub_logging.set_verbosity(level))
        if bars:
            restore.append(hub_utils.enable_progress_bars)
    try:
        yield
    finally:
        for undo in restore:
            undo()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
