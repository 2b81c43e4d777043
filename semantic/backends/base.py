"""The contract every embedding backend fulfils.

A backend turns a list of texts into a list of vectors. Everything else (batching,
retries, bookkeeping, cleaning the text) happens around it, so a backend for another
provider is one small class::

    class MyBackend(EmbeddingBackend):
        name = "my-provider"
        max_batch_size = 64
        max_input_chars = 8000
        default_dimensions = 1024
        supported_dimensions = range(1, 1025)

        def embed(self, texts, *, task_type, dimensions, titles=None):
            return call_my_provider(texts)

and ``SEMANTIC = {"BACKEND": "myproject.embeddings.MyBackend"}``.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence

Vector = list[float]

#: Every task type the Gemini embedding API accepts.
TASK_TYPES = (
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "RETRIEVAL_DOCUMENT",
    "RETRIEVAL_QUERY",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)


class EmbeddingError(Exception):
    """An embedding request failed.

    ``transient`` errors (rate limits, server errors, timeouts) are retried with
    backoff; others (a rejected request) are recorded at once. ``retry_after`` is the
    server's requested wait in seconds, when it sent one.
    """

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None):
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class EmbeddingBackend:
    """Base class for embedding providers.

    Subclasses set the class attributes below and implement :meth:`embed`.
    """

    #: Short provider name, part of :attr:`model_id`.
    name: str = ""
    #: Default model name when ``SEMANTIC["MODEL"]`` is not set.
    default_model: str = ""
    #: Most texts one :meth:`embed` call may receive.
    max_batch_size: int = 100
    #: Texts longer than this many characters are truncated before embedding.
    max_input_chars: int = 8192
    #: The model's own vector size: what ``semantic.embed()`` makes when given no size.
    default_dimensions: int = 768
    #: Vector sizes the model can produce.
    supported_dimensions: Container[int] = ()

    def __init__(self, *, model: str | None = None, **options: object) -> None:
        self.model = model or self.default_model
        self.options = options

    @property
    def model_id(self) -> str:
        """Identifies the vectors this backend makes; stored beside each vector."""
        return f"{self.name}:{self.model}"

    def embed(
        self,
        texts: Sequence[str],
        *,
        task_type: str,
        dimensions: int,
        titles: Sequence[str | None] | None = None,
    ) -> list[Vector]:
        """Return one vector of ``dimensions`` floats per text, in order.

        ``texts`` holds at most :attr:`max_batch_size` non-empty, cleaned strings.
        Raise :class:`EmbeddingError` on failure.
        """
        raise NotImplementedError


def l2_normalize(vector: Sequence[float]) -> Vector:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        return list(vector)
    return [x / norm for x in vector]
