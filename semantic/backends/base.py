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

and ``SEMANTIC = {"BACKEND": "myproject.embeddings.MyBackend"}``. A backend that
sends requests over the network gives each one at most
``request_timeout(its own time-out)`` seconds, so that a search gives up in time
(:func:`time_limit`).
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

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


#: A server's ``Retry-After`` is trusted up to this many seconds (garbled or hostile
#: values must not park every worker for days, nor overflow a timedelta).
MAX_RETRY_AFTER = 3600.0

#: What went wrong, which decides what the worker does next.
TRANSIENT = "transient"  # rate limit, server error, time-out: retry the same request later
BAD_INPUT = "bad_input"  # the API rejected a text: split the batch to find it, fail that row
CONFIG = "config"  # bad key, no permission, unknown model: no text is at fault; stop and say what to fix
FIELD = "field"  # one field's settings do not fit the model (its size): stop that field, not the key
KINDS = (TRANSIENT, BAD_INPUT, CONFIG, FIELD)


#: Seconds each request may take inside :func:`time_limit`; None outside one.
_time_limit: ContextVar[float | None] = ContextVar("semantic_time_limit", default=None)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Each request a backend sends inside the block takes at most ``seconds``.

    A search embeds its text while a web request waits, and the web server kills that
    request at its own time-out (gunicorn's and Heroku's are 30 s, the worker's
    ``TIMEOUT`` by default): the search must give up first, to answer "search is
    unavailable" rather than a killed request's 500. A context variable, not an
    attribute of the backend, because one cached backend serves the worker loop and
    every thread of a web process.
    """
    token = _time_limit.set(seconds)
    try:
        yield
    finally:
        _time_limit.reset(token)


def request_timeout(default: float) -> float:
    """The seconds a request may take now: the backend's own ``default``, or less inside :func:`time_limit`."""
    limit = _time_limit.get()
    return default if limit is None else min(default, limit)


class EmbeddingError(Exception):
    """An embedding request failed.

    ``kind`` says whose fault it is. ``transient`` errors are retried with backoff;
    ``bad_input`` ones are recorded against the rejected row; ``config`` errors are
    nobody's row's fault, so rows stay pending and the problem is reported once (see
    :func:`semantic.ratelimit.configuration_problem`); ``field`` errors stop only the
    field whose settings do not fit (the other fields on the same key go on). ``retry_after`` is the
    server's requested wait in seconds, when it sent one.

    ``transient=True/False`` is still accepted and means ``kind="transient"`` /
    ``kind="bad_input"``. ``retry_after`` is kept within ``0..MAX_RETRY_AFTER`` whatever
    a backend passes, so no server's answer can overflow a worker's arithmetic.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        transient: bool | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        if kind is None:
            kind = TRANSIENT if transient else BAD_INPUT
        if kind not in KINDS:
            raise ValueError(f"EmbeddingError kind must be one of {', '.join(KINDS)}, not {kind!r}.")
        self.kind = kind
        self.retry_after = _bounded(retry_after)

    @property
    def transient(self) -> bool:
        return self.kind == TRANSIENT


def _bounded(seconds: float | None) -> float | None:
    """``seconds`` within ``0..MAX_RETRY_AFTER``; NaN counts as not given."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value (seconds or an HTTP date).

    Clamped to ``0..MAX_RETRY_AFTER``; anything unreadable (``soon``, ``nan``) counts as
    no header, so a hostile or broken server can neither crash a worker nor park it forever.
    """
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return _bounded(seconds)


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
    #: Longest passage, in English-equivalent characters (``semantic.text.weighted_length``),
    #: the model reads whole (fields with ``passages``);
    #: 0 means ``max_input_chars``, for models whose input limit is all they read.
    passage_chars: int = 0
    #: The model's own vector size, suggested when a field's size is one it cannot make;
    #: ``semantic.embed()`` makes it when given no size only if 384 (the fields' default)
    #: is not among :attr:`supported_dimensions`.
    default_dimensions: int = 768
    #: Vector sizes the model can produce.
    supported_dimensions: Container[int] = ()
    #: Whether the task type changes the vector. False (a model without task types): one
    #: cached vector of a text serves every task type, so a search that asks for two
    #: (two fields, or a field and its passages) computes it once.
    uses_task_types: bool = True
    #: Whether :meth:`embed` sends one request per distinct title (an API that takes one
    #: title per request). Callers that count requests against a rate limit then give it
    #: one title per call, so that the limit sees every request.
    one_title_per_request: bool = False

    def __init__(self, *, model: str | None = None, **options: object) -> None:
        self.model = model or self.default_model
        self.options = options

    def setup_problem(self) -> str | None:
        """Why this backend can send nothing on this machine (no API key), or None.

        Known before any request, so a run stops before its first batch: no request
        counted, no row visited. Errors only an answer reveals (a refused key) go
        through :meth:`embed` as ``EmbeddingError(kind="config")``.
        """
        return None

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
        Raise :class:`EmbeddingError` on failure. Callers check every answer (count,
        size, :func:`malformed` vectors) before caching or storing it, so a backend may
        pass on what its API sent; only the caller can say which field a size misfits.
        """
        raise NotImplementedError


def malformed(vector: Sequence[float]) -> str | None:
    """Why ``vector`` may be neither stored nor searched with, or None when it may.

    pgvector refuses NaN and infinite values (the whole statement fails, every row of
    the batch with it), and the cosine distance to a vector of zeros is undefined (NaN
    for every row it is compared with). An answer holding one is malformed: retried
    like any other malformed answer, never cached or written.
    """
    if not len(vector):
        return "an empty vector"
    if not all(map(math.isfinite, vector)):
        return "a vector holding NaN or infinite values"
    if not any(vector):
        return "a vector of zeros"
    return None


def l2_normalize(vector: Sequence[float]) -> Vector:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        return list(vector)
    return [x / norm for x in vector]
