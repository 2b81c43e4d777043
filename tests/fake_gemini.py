"""A fake Gemini API on 127.0.0.1 for tests and benchmarks.

It answers ``POST /v1[beta]/models/<model>:batchEmbedContents`` the way the real API
does, so the real google-genai client can be pointed at it (``base_url``). Vectors are
deterministic: hashed bag-of-words, so texts sharing words point the same way and
the same text always gets the same vector. As the real API, it only normalises
full-size (3072) vectors.

It counts requests (each record gets the ``status`` it was answered with,
``embedded`` when that answer held embeddings, and ``timeout``: the whole seconds the
client said it would wait, google-genai's ``X-Server-Timeout`` header) and can be
told to misbehave: answer 429 with Retry-After (or a ``RetryInfo`` delay in the body),
500, 400, malformed JSON, embeddings with NaN, no or too many values, or slowly;
``fail_every`` answers every request alike (a revoked key); ``on_request`` runs code
between a request's arrival and its answer (edits while a batch is in flight), and
``on_batch_request`` before a batch job is made (work done while a job is submitted).

It also runs batch embedding jobs (``client.batches.create_embeddings``): ``POST
models/<model>:asyncBatchEmbedContent`` creates ``batches/fake-<n>``, ``GET
batches/<id>`` returns it as the real long-running operation (each GET moves it on,
``BATCH_STATE_*`` in ``metadata.state``, results in
``metadata.output.inlinedResponses.inlinedResponses``), ``POST batches/<id>:cancel``
and ``DELETE batches/<id>`` cancel and forget it. Jobs can fail as a whole or per
input. Run it alone for benchmarks::

    python -m tests.fake_gemini --port 8765 --latency 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = re.compile(r"^/v1(?:beta)?/models/(?P<model>[^/:]+):batchEmbedContents$")
BATCH_CREATE = re.compile(r"^/v1(?:beta)?/models/(?P<model>[^/:]+):asyncBatchEmbedContent$")
JOB = re.compile(r"^/v1(?:beta)?/(?P<name>batches/[^/:]+)$")
JOB_CANCEL = re.compile(r"^/v1(?:beta)?/(?P<name>batches/[^/:]+):cancel$")
WORD = re.compile(r"\w+")
NATIVE_DIMENSIONS = 3072


def fake_vector(text: str, dimensions: int, task_type: str | None = None) -> list[float]:
    """Hashed bag of words, scaled so that only full-size vectors have unit length."""
    vector = [0.0] * dimensions
    for word in WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "big") % dimensions
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    if not any(vector):
        vector[0] = 1.0
    norm = math.sqrt(sum(x * x for x in vector))
    scale = 1.0 if dimensions == NATIVE_DIMENSIONS else 3.0
    return [scale * x / norm for x in vector]


def api_error(
    code: int, message: str, status: str, reason: str | None = None, *, retry_delay: str | None = None
) -> str:
    """An error body as Google APIs send it; ``retry_delay`` (``"30s"``) adds the ``RetryInfo``
    entry the Gemini API gives its 429s instead of a ``Retry-After`` header."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    details = []
    if reason:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}
        )
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    if details:
        error["details"] = details
    return json.dumps({"error": error})


#: What Gemini answers to a wrong API key, word for word.
BAD_KEY = api_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", "API_KEY_INVALID")
#: A key whose project may not use the API.
PERMISSION_DENIED = api_error(
    403, "Generative Language API has not been used in this project or it is disabled.", "PERMISSION_DENIED"
)
#: An unknown model name.
MODEL_NOT_FOUND = api_error(
    404, "models/no-such-model is not found for API version v1beta, or is not supported for embedContent.", "NOT_FOUND"
)
UNAUTHENTICATED = api_error(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")


@dataclass
class Fault:
    status: int
    body: str
    headers: dict[str, str]
    #: Answer 200 with this raw JSON as the embedding of every text sent, instead of ``body``.
    embedding: str | None = None


@dataclass
class BatchJob:
    """A batch embedding job; its outcome is fixed at creation and shown once it is done."""

    name: str
    model: str
    display_name: str | None
    polls_left: int
    #: One ``{"response": ...}`` or ``{"error": ...}`` per input, in input order.
    responses: list[dict[str, Any]]
    #: The whole job fails with this message.
    error: str | None
    state: str = "BATCH_STATE_PENDING"

    @property
    def done(self) -> bool:
        return self.state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")

    def poll(self) -> None:
        """One GET: running until the last poll, then failed or succeeded."""
        if self.done:
            return
        self.polls_left -= 1
        if self.polls_left > 0:
            self.state = "BATCH_STATE_RUNNING"
        else:
            self.state = "BATCH_STATE_FAILED" if self.error else "BATCH_STATE_SUCCEEDED"

    def operation(self) -> dict[str, Any]:
        """The job as the API returns it: a long-running operation."""
        metadata: dict[str, Any] = {"model": self.model, "state": self.state}
        if self.display_name:
            metadata["displayName"] = self.display_name
        operation: dict[str, Any] = {"name": self.name, "metadata": metadata, "done": self.done}
        if self.state == "BATCH_STATE_SUCCEEDED":
            metadata["output"] = {"inlinedResponses": {"inlinedResponses": self.responses}}
        elif self.state == "BATCH_STATE_FAILED":
            operation["error"] = {"code": 13, "message": self.error}
        return operation


class FakeGemini:
    """Start with ``with FakeGemini() as server:``; point the client at ``server.base_url``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> None:
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        #: Answer every request with this, until :meth:`reset` (after ``faults``).
        self.broken: Fault | None = None
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        #: Runs when a batch job's create request arrives, before the job is made.
        self.on_batch_request: Callable[[], None] | None = None
        #: Answer 400 to any request with a text containing this marker.
        self.reject_marker: str | None = None
        #: ``asyncBatchEmbedContent`` requests, each with the job ``name`` (``requests`` has only the others).
        self.batch_requests: list[dict[str, Any]] = []
        self.jobs: dict[str, BatchJob] = {}
        #: A new job is done at its n-th GET (RUNNING before).
        self.batch_polls_until_done = 1
        #: Inputs of a batch job containing this marker get an error instead of an embedding.
        self.reject_batch_marker: str | None = None
        #: Inputs of a batch job containing this marker get an embedding of NaNs (a broken answer).
        self.nan_batch_marker: str | None = None
        self._batch_failures: list[str] = []
        self._job_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def texts(self, *, embedded: bool = False) -> list[str]:
        """Every text sent, in order; with ``embedded``, only those the server answered with embeddings."""
        return [
            r["content"]["parts"][0]["text"]
            for req in self.requests
            if not embedded or req.get("embedded")
            for r in req["body"].get("requests", [])
        ]

    def fail_next(
        self, status: int, *, times: int = 1, retry_after: str | None = None, body: str | None = None
    ) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        if body is None:
            body = json.dumps({"error": {"code": status, "message": f"fake error {status}", "status": "FAKE"}})
        with self._lock:
            self.faults += [Fault(status, body, headers)] * times

    def fail_every(self, status: int, *, body: str, retry_after: str | None = None) -> None:
        """Answer every request with ``status`` and ``body`` until :meth:`reset` (a revoked key, an outage)."""
        self.broken = Fault(status, body, {"Retry-After": retry_after} if retry_after is not None else {})

    def malformed_next(self, *, times: int = 1) -> None:
        with self._lock:
            self.faults += [Fault(200, '{"embeddings": [', {})] * times

    def bad_embeddings_next(self, embedding: str, *, times: int = 1) -> None:
        """Answer 200 with ``embedding``, raw JSON, for every text of the request: one embedding
        per text, as the API does, but ``{"values": [NaN, ...]}``, ``{"values": []}``, ``{}``,
        or a vector of another size than was asked for. Raw, so that ``NaN`` and ``1e400``
        (infinite once parsed) reach the client as a broken server would send them."""
        with self._lock:
            self.faults += [Fault(200, "", {}, embedding)] * times

    def fail_next_batch(self, message: str) -> None:
        """The next batch job created ends as ``BATCH_STATE_FAILED`` with this error."""
        with self._lock:
            self._batch_failures.append(message)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self.batch_requests.clear()
            self.jobs.clear()
            self._batch_failures.clear()
        self.broken = None
        self.on_request = None
        self.on_batch_request = None
        self.reject_marker = None
        self.reject_batch_marker = None
        self.nan_batch_marker = None
        self.batch_polls_until_done = 1
        self.latency = 0.0

    def _create_job(self, record: dict[str, Any]) -> BatchJob:
        batch = record["body"]["batch"]
        items = [r["request"] for r in batch["inputConfig"]["requests"]["requests"]]
        responses: list[dict[str, Any]] = []
        for item in items:
            text = "".join(p.get("text", "") for p in item["content"]["parts"])
            dims = item.get("outputDimensionality") or NATIVE_DIMENSIONS
            if self.reject_batch_marker and self.reject_batch_marker in text:
                responses.append({"error": {"code": 3, "message": "Request contains an invalid argument."}})
            elif self.nan_batch_marker and self.nan_batch_marker in text:
                responses.append({"response": {"embedding": {"values": [math.nan] * dims}}})
            else:
                responses.append({"response": {"embedding": {"values": fake_vector(text, dims, item.get("taskType"))}}})
        with self._lock:
            job = BatchJob(
                name=f"batches/fake-{next(self._job_ids)}",
                model=f"models/{record['model']}",
                display_name=batch.get("displayName"),
                polls_left=self.batch_polls_until_done,
                responses=responses,
                error=self._batch_failures.pop(0) if self._batch_failures else None,
            )
            record["name"] = job.name
            self.batch_requests.append(record)
            self.jobs[job.name] = job
        return job

    def start(self) -> FakeGemini:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                match = JOB.match(self.path.split("?")[0])
                with fake._lock:
                    job = fake.jobs.get(match["name"]) if match else None
                    if job:
                        job.poll()
                        operation = job.operation()
                if not job:
                    return self._send(404, api_error(404, "Requested entity was not found.", "NOT_FOUND"))
                return self._send(200, json.dumps(operation))

            def do_DELETE(self) -> None:
                match = JOB.match(self.path.split("?")[0])
                with fake._lock:
                    job = fake.jobs.pop(match["name"], None) if match else None
                if not job:
                    return self._send(404, api_error(404, "Requested entity was not found.", "NOT_FOUND"))
                return self._send(200, "{}")

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if create := BATCH_CREATE.match(path):
                    return self._create_batch(create["model"], raw)
                if cancel := JOB_CANCEL.match(path):
                    return self._cancel_batch(cancel["name"])
                match = PATH.match(path)
                if not match:
                    return self._send(404, json.dumps({"error": {"code": 404, "message": "not found"}}))
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._send(400, json.dumps({"error": {"code": 400, "message": "bad JSON"}}))
                record = {
                    "model": match["model"],
                    "body": body,
                    "api_key": self.headers.get("x-goog-api-key"),
                    "timeout": self.headers.get("x-server-timeout"),
                    "time": time.monotonic(),
                }
                with fake._lock:
                    fake.requests.append(record)
                    fault = fake.faults.pop(0) if fake.faults else fake.broken
                if fake.on_request:
                    fake.on_request(record)
                if fake.latency:
                    time.sleep(fake.latency)
                if fault and fault.embedding is not None:
                    record["status"] = 200
                    answer = ",".join([fault.embedding] * len(body.get("requests", [])))
                    return self._send(200, '{"embeddings": [' + answer + "]}")
                if fault:
                    record["status"] = fault.status
                    return self._send(fault.status, fault.body, fault.headers)
                texts = ["".join(p.get("text", "") for p in r["content"]["parts"]) for r in body.get("requests", [])]
                if fake.reject_marker and any(fake.reject_marker in text for text in texts):
                    error = {
                        "error": {
                            "code": 400,
                            "message": "Request contains an invalid argument.",
                            "status": "INVALID_ARGUMENT",
                        }
                    }
                    record["status"] = 400
                    return self._send(400, json.dumps(error))
                embeddings = []
                for item in body.get("requests", []):
                    text = "".join(p.get("text", "") for p in item["content"]["parts"])
                    dims = item.get("outputDimensionality") or NATIVE_DIMENSIONS
                    embeddings.append({"values": fake_vector(text, dims, item.get("taskType"))})
                record["status"], record["embedded"] = 200, True
                return self._send(200, json.dumps({"embeddings": embeddings}))

            def _create_batch(self, model: str, raw: bytes) -> None:
                if fake.on_batch_request:
                    fake.on_batch_request()
                try:
                    record = {
                        "model": model,
                        "body": json.loads(raw),
                        "api_key": self.headers.get("x-goog-api-key"),
                        "time": time.monotonic(),
                    }
                    job = fake._create_job(record)
                except (ValueError, KeyError, TypeError):
                    return self._send(400, api_error(400, "Invalid batch request.", "INVALID_ARGUMENT"))
                return self._send(200, json.dumps(job.operation()))

            def _cancel_batch(self, name: str) -> None:
                with fake._lock:
                    job = fake.jobs.get(name)
                    if job and not job.done:
                        job.state = "BATCH_STATE_CANCELLED"
                if not job:
                    return self._send(404, api_error(404, "Requested entity was not found.", "NOT_FOUND"))
                return self._send(200, "{}")

            def _send(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a time-out test)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = parser.parse_args()
    server = FakeGemini(port=args.port, latency=args.latency)
    print(f"fake Gemini API on {server.base_url}", flush=True)
    server._server.serve_forever()


if __name__ == "__main__":
    main()
