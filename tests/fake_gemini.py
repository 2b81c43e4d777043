"""A fake Gemini API on 127.0.0.1 for tests and benchmarks.

It answers ``POST /v1[beta]/models/<model>:batchEmbedContents`` the way the real API
does, so the real google-genai client can be pointed at it (``base_url``). Vectors are
deterministic: hashed bag-of-words, so texts sharing words point the same way and
the same text always gets the same vector. As the real API, it only normalises
full-size (3072) vectors.

It counts requests and can be told to misbehave: answer 429 with Retry-After, 500,
400, malformed JSON, or slowly. Run it alone for benchmarks::

    python -m tests.fake_gemini --port 8765 --latency 0.2
"""

from __future__ import annotations

import argparse
import hashlib
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


@dataclass
class Fault:
    status: int
    body: str
    headers: dict[str, str]


class FakeGemini:
    """Start with ``with FakeGemini() as server:``; point the client at ``server.base_url``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> None:
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        #: Answer 400 to any request with a text containing this marker.
        self.reject_marker: str | None = None
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

    def texts(self) -> list[str]:
        return [r["content"]["parts"][0]["text"] for req in self.requests for r in req["body"].get("requests", [])]

    def fail_next(
        self, status: int, *, times: int = 1, retry_after: str | None = None, body: str | None = None
    ) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        if body is None:
            body = json.dumps({"error": {"code": status, "message": f"fake error {status}", "status": "FAKE"}})
        with self._lock:
            self.faults += [Fault(status, body, headers)] * times

    def malformed_next(self, *, times: int = 1) -> None:
        with self._lock:
            self.faults += [Fault(200, '{"embeddings": [', {})] * times

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults.clear()
        self.on_request = None
        self.reject_marker = None
        self.latency = 0.0

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

            def do_POST(self) -> None:
                match = PATH.match(self.path.split("?")[0])
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
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
                    "time": time.monotonic(),
                }
                with fake._lock:
                    fake.requests.append(record)
                    fault = fake.faults.pop(0) if fake.faults else None
                if fake.on_request:
                    fake.on_request(record)
                if fake.latency:
                    time.sleep(fake.latency)
                if fault:
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
                    return self._send(400, json.dumps(error))
                embeddings = []
                for item in body.get("requests", []):
                    text = "".join(p.get("text", "") for p in item["content"]["parts"])
                    dims = item.get("outputDimensionality") or NATIVE_DIMENSIONS
                    embeddings.append({"values": fake_vector(text, dims, item.get("taskType"))})
                return self._send(200, json.dumps({"embeddings": embeddings}))

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
