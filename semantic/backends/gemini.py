"""Gemini embeddings through Google's google-genai SDK.

One :meth:`GeminiBackend.embed` call is one ``models.embed_content`` call with a
list of texts, which the SDK sends as a single ``:batchEmbedContents`` request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import groupby
from typing import Any, TypeVar

from django.utils.html import strip_tags
from django.utils.text import Truncator
from django.views.decorators.debug import sensitive_variables

from semantic.backends.base import (
    BAD_INPUT,
    CONFIG,
    TRANSIENT,
    EmbeddingBackend,
    EmbeddingError,
    Vector,
    l2_normalize,
    malformed,
    parse_retry_after,
    request_timeout,
)
from semantic.backends.gemini_client import milliseconds, new_client, sendable_key
from semantic.text import redact

TRANSIENT_STATUS = {408, 409, 429, 500, 502, 503, 504}
#: A protobuf Duration in JSON (``RetryInfo.retryDelay``): seconds, up to nine decimals, then ``s``.
DURATION = re.compile(r"(-?\d+(?:\.\d{1,9})?)s")
#: ``ErrorInfo`` reasons Gemini gives (with a 400) for a key that cannot be used.
KEY_REASONS = {"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"}
#: What to change, per configuration error.
FIX_KEY = "Set SEMANTIC['API_KEY'] (or the GEMINI_API_KEY environment variable) to a valid Gemini API key."
FIX_PERMISSION = (
    "Check that the key in SEMANTIC['API_KEY'] belongs to a project with the Generative Language API "
    "enabled, and that the key may call it."
)
FIX_MODEL = "Check SEMANTIC['MODEL'] (or the field's embedding_model): {model!r} is not a Gemini embedding model."
FIX_PROJECT = "The API refuses this project or region; fix it in Google AI Studio or set SEMANTIC['API_KEY']."
#: A key no request can carry: its header could not even be written, so the API never saw it.
NO_KEY = (
    "No Gemini API key: set SEMANTIC['API_KEY'] or the GEMINI_API_KEY "
    "environment variable, or remove SEMANTIC['BACKEND'] to use the local model."
)
#: The header Gemini reads the key from, and what google-genai is given to put there until it is sent.
KEY_HEADER = "x-goog-api-key"
KEY_STAND_IN = "set-when-sent"
UNSENDABLE_KEY = (
    "The Gemini API key holds a character an HTTP header cannot carry (only printable ASCII can: "
    "were quotes copied with it?). " + FIX_KEY
)

Result = TypeVar("Result")


class GeminiBackend(EmbeddingBackend):
    """``gemini-embedding-001`` (or any Gemini embedding model) over the Gemini API.

    Options (``SEMANTIC["BACKEND_OPTIONS"]``): ``api_key`` and ``base_url`` override
    ``SEMANTIC["API_KEY"]`` / ``SEMANTIC["BASE_URL"]``; ``timeout`` is in seconds.
    Inputs are truncated to ``max_input_chars`` (about 2,048 tokens of English text).
    Vectors smaller than the model's native 3,072 are L2-normalised, because the API
    only normalises the full-size output.
    """

    name = "gemini"
    default_model = "gemini-embedding-001"
    max_batch_size = 100
    max_input_chars = 8000
    native_dimensions = 3072
    default_dimensions = 768
    supported_dimensions = range(128, 3073)
    #: google-genai's EmbedContentConfig holds one title for every text of a call.
    one_title_per_request = True

    @sensitive_variables("api_key")
    def __init__(
        self,
        *,
        model: str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> None:
        from semantic.conf import semantic_settings as conf

        super().__init__(model=model, **options)
        # google-genai strips the key before sending it; so do we, so that redaction finds it.
        self.api_key = (api_key or conf.API_KEY or "").strip() or None
        self.base_url = base_url or conf.BASE_URL
        self.timeout = timeout if timeout is not None else conf.TIMEOUT
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            if problem := self.setup_problem():
                raise EmbeddingError(problem, kind=CONFIG)
            self._client = self._call(lambda: new_client(self.api_key, base_url=self.base_url, timeout=self.timeout))
        return self._client

    def setup_problem(self) -> str | None:
        if not self.api_key:
            return NO_KEY
        if not sendable_key(self.api_key):
            # Else httpx fails to encode the header (UnicodeEncodeError), which reads as a
            # network blip: retried for ever, "try again later", the key never blamed.
            return UNSENDABLE_KEY
        return None

    def embed(
        self,
        texts: Sequence[str],
        *,
        task_type: str,
        dimensions: int,
        titles: Sequence[str | None] | None = None,
    ) -> list[Vector]:
        # The SDK sends one title for the whole request, so rows with different titles
        # go in separate requests; rows without titles (the usual case) share one.
        items = list(zip(texts, titles or [None] * len(texts)))
        vectors: list[Vector] = []
        for title, group in groupby(items, key=lambda item: item[1]):
            chunk = [text for text, _ in group]
            vectors.extend(self._embed_request(chunk, task_type, dimensions, title))
        return vectors

    def _embed_request(self, texts: list[str], task_type: str, dimensions: int, title: str | None) -> list[Vector]:
        from google.genai import types

        # A search (time_limit) gives this request less time than the client's own time-out.
        timeout = request_timeout(self.timeout)
        limited = types.HttpOptions(timeout=milliseconds(timeout)) if timeout < self.timeout else None
        config = types.EmbedContentConfig(
            task_type=task_type, title=title, output_dimensionality=dimensions, http_options=limited
        )
        contents = _contents(texts)
        client = self.client
        response = self._call(lambda: client.models.embed_content(model=self.model, contents=contents, config=config))
        embeddings = response.embeddings or []
        if len(embeddings) != len(texts):
            raise EmbeddingError(
                f"Gemini API returned {len(embeddings)} embeddings for {len(texts)} texts.",
                kind=TRANSIENT,
            )
        vectors = [list(e.values or []) for e in embeddings]
        for vector in vectors:
            # Checked before normalising, which would spread one NaN over the whole vector.
            if problem := malformed(vector):
                raise EmbeddingError(f"Gemini API sent a malformed answer: {problem}.", kind=TRANSIENT)
        # A vector of another size is passed on unnormalised: the caller knows which
        # field it misfits and says so (a field's problem, not the key's).
        return [l2_normalize(v) if len(v) == dimensions < self.native_dimensions else v for v in vectors]

    # -- Batch API: half the price, results within 24 hours -----------------------

    def submit_batch(self, texts: Sequence[str], *, task_type: str, dimensions: int, display_name: str) -> str:
        """Start a batch embeddings job for ``texts``; returns the job's name."""
        import warnings

        from google.genai import types

        source = types.EmbeddingsBatchJobSource(
            inlined_requests=types.EmbedContentBatch(
                contents=_contents(texts),
                config=types.EmbedContentConfig(task_type=task_type, output_dimensionality=dimensions),
            )
        )
        config = types.CreateEmbeddingsBatchJobConfig(display_name=display_name)
        client = self.client
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is experimental")
            job = self._call(lambda: client.batches.create_embeddings(model=self.model, src=source, config=config))
        return str(job.name)

    def batch_status(self, name: str, *, dimensions: int) -> BatchStatus:
        """Where the job stands; once it has succeeded, one vector or error per text.

        A job Gemini answers 404 for is gone (deleted, or made in another key's Google
        Cloud project): it is finished, with nothing to collect, not a wrong model.
        """
        from google.genai import errors

        client = self.client

        def get() -> Any:
            try:
                return client.batches.get(name=name)
            except errors.APIError as exc:
                if exc.code == 404:
                    return None
                raise

        job = self._call(get)
        if job is None:
            return BatchStatus(name=name, state=JOB_GONE_STATE, done=True, error=JOB_GONE.format(name=name))
        state = str(getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED")
        status = BatchStatus(name=name, state=state, done=bool(job.done))
        if job.error is not None:
            status.error = self._clean(job.error.message or f"error {job.error.code}")
        destination = job.dest
        # The SDK files the results as embeddings only when at least one input succeeded.
        results = destination and (destination.inlined_embed_content_responses or destination.inlined_responses)
        for result in results or []:
            embedding = getattr(result.response, "embedding", None)
            if result.error is not None or embedding is None:
                error = result.error
                message = (error.message if error else None) or "no embedding returned"
                status.results.append((None, self._clean(message), error is None or error.code != 3))
                continue
            vector = list(embedding.values or [])
            if len(vector) == dimensions and dimensions < self.native_dimensions:
                vector = l2_normalize(vector)
            status.results.append((vector, None, False))
        return status

    def _call(self, request: Callable[[], Result]) -> Result:
        """Run one SDK call, turning its exceptions into EmbeddingErrors without the key.

        The SDK's exception is dropped, not chained: the frames of its traceback hold
        the request headers (the key among them), and Django's debug page shows every
        frame's local variables, with ``DEBUG = True`` even those ``sensitive_variables``
        names.
        """
        try:
            return request()
        except Exception as exc:
            error = self._error(exc)
        raise error from None

    def _error(self, exc: Exception) -> EmbeddingError:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            kind, fix = self._classify(exc)
            message = f"Gemini API error {exc.code}: {self._excerpt(exc.message or exc.status or '')}"
            return EmbeddingError(f"{message} {fix}" if fix else message, kind=kind, retry_after=_retry_after(exc))
        if isinstance(exc, (errors.UnknownApiResponseError, json.JSONDecodeError)):
            return EmbeddingError(
                f"Gemini API sent a response that is not JSON: {self._excerpt(str(exc))}", kind=TRANSIENT
            )
        # httpx time-outs and connection errors
        return EmbeddingError(self._clean(f"Gemini API request failed: {type(exc).__name__}: {exc}"), kind=TRANSIENT)

    def _classify(self, exc: Any) -> tuple[str, str | None]:
        """The kind of an API error and, for a configuration error, what to change."""
        if exc.code in TRANSIENT_STATUS:
            return TRANSIENT, None
        if exc.code == 401 or (exc.code == 400 and _reasons(exc) & KEY_REASONS):
            return CONFIG, FIX_KEY
        if exc.code == 403:
            return CONFIG, FIX_PERMISSION
        if exc.code == 404:
            return CONFIG, FIX_MODEL.format(model=self.model)
        if exc.code == 400 and exc.status == "FAILED_PRECONDITION":
            return CONFIG, FIX_PROJECT
        return BAD_INPUT, None

    def _clean(self, message: str) -> str:
        return redact(message, self.api_key)

    def _excerpt(self, text: str) -> str:
        """What an error body says, short enough for a log line, an admin warning and a
        failure record, redacted before it is cut (a cut key would escape redaction). An
        HTML page (a proxy's, a load balancer's) is named by its title."""
        text = self._clean(text)
        if not HTML_PAGE.search(text):
            return Truncator(text).chars(MAX_EXCERPT)
        title = HTML_TITLE.search(text)
        page = " ".join(strip_tags(title.group(1) if title else text).split())
        return f"{Truncator(page).chars(MAX_EXCERPT)} ({HTML_ANSWER})"


@dataclass
class BatchStatus:
    """A batch job as last seen: ``state`` is a ``JOB_STATE_*`` name."""

    name: str
    state: str
    done: bool
    error: str | None = None
    #: Per text, in order: (vector, None, _) or (None, error message, transient).
    results: list[tuple[Vector | None, str | None, bool]] = dataclass_field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.state in ("JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED")


#: How much of an error body goes into a message.
MAX_EXCERPT = 300
HTML_PAGE = re.compile(r"<(!doctype\s+html|html)\b", re.IGNORECASE)
HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
HTML_ANSWER = "an HTML page, not the API's JSON: a proxy or load balancer answered"


#: A job Gemini no longer knows (404): what its record is closed with.
JOB_GONE_STATE = "JOB_STATE_NOT_FOUND"
JOB_GONE = (
    "Gemini no longer knows the job {name} (deleted in Google AI Studio, or made with a key of another "
    "Google Cloud project)"
)


def _contents(texts: Sequence[str]) -> list[Any]:
    """One Content per text: given plain strings, google-genai joins them into one
    multi-part content for multimodal models (gemini-embedding-2 and later), which
    then get one embedding for the lot."""
    from google.genai import types

    return [types.Content(parts=[types.Part(text=text)]) for text in texts]


def _header(exc: Any, name: str) -> str | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return headers.get(name) if headers is not None else None


def _details(exc: Any) -> list[dict[str, Any]]:
    """The ``error.details`` entries of an API error's body (``google.rpc.ErrorInfo``, ``RetryInfo`` ...).

    google-genai keeps the parsed JSON body as ``APIError.details`` and reads only the
    code, status and message out of it; the entries are left for us.
    """
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _reasons(exc: Any) -> set[str]:
    """The ``ErrorInfo`` reasons in an API error's body (``API_KEY_INVALID`` ...)."""
    return {str(d.get("reason")) for d in _details(exc) if d.get("reason")}


def _retry_after(exc: Any) -> float | None:
    """Seconds the API asked us to wait: the ``Retry-After`` header, else the body's ``RetryInfo``.

    The Gemini API answers a 429 with no ``Retry-After`` header; the wait is in the body,
    as a ``google.rpc.RetryInfo`` entry whose ``retryDelay`` is a protobuf Duration in
    its JSON form, decimal seconds with an ``s`` (``"30s"``, ``"45.837906927s"``).
    Anything unreadable counts as no wait given, as a garbled header does.
    """
    header = parse_retry_after(_header(exc, "retry-after"), now=time.time())
    if header is not None:
        return header
    for detail in _details(exc):
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo") and isinstance(delay, str):
            if match := DURATION.fullmatch(delay.strip()):
                return parse_retry_after(match[1], now=time.time())
    return None
