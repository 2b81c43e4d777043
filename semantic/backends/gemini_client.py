"""The google-genai client, built so that it never holds the Gemini API key.

Given the key, google-genai keeps it in the headers of every request object it builds, and
these are the local variables of its frames when a call fails. Error trackers read those
frames before the backend sees the error: Sentry's google-genai integration, enabled by
default wherever the SDK is installed, reported every failed call with the key in five
frames. So the SDK is given a stand-in, and httpx writes the real key into each request as
it is sent.
"""

from __future__ import annotations

import math
from typing import Any

from django.views.decorators.debug import sensitive_variables

#: The header Gemini reads the key from, and what google-genai is given to put there until it is sent.
KEY_HEADER = "x-goog-api-key"
KEY_STAND_IN = "set-when-sent"


@sensitive_variables()
def new_client(api_key: str, *, base_url: str | None, timeout: float) -> Any:
    """A ``genai.Client`` for ``base_url`` whose requests carry ``api_key`` only as they are sent.

    ``client.aio`` gets the same auth, else it would send the stand-in ("API key not valid").
    Where aiohttp is installed, google-genai sends async requests through it instead, which
    takes no httpx auth: the async client is not for use there.
    """
    from google import genai
    from google.genai import types

    http_options = types.HttpOptions(
        base_url=base_url,
        timeout=milliseconds(timeout),
        client_args={"auth": ApiKeyAuth(api_key)},
        async_client_args={"auth": ApiKeyAuth(api_key)},
    )
    return genai.Client(api_key=KEY_STAND_IN, http_options=http_options)


class ApiKeyAuth:
    """Puts the key into the header google-genai names, as a request is sent.

    An httpx "auth" callable: google-genai sends through httpx or its fork httpx2, and both
    take one, so neither is imported here.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"{type(self).__name__}([redacted])"

    @sensitive_variables()
    def __call__(self, request: Any) -> Any:
        request.headers[KEY_HEADER] = self._key
        return request


def sendable_key(key: str) -> bool:
    """Whether ``key`` can go in the ``x-goog-api-key`` header; every real key is printable ASCII."""
    return key.isascii() and key.isprintable()


def milliseconds(seconds: float) -> int:
    """The SDK counts whole milliseconds and takes 0 for "no time-out": round up, so that
    a time-out under a millisecond still is one (semantic.E009 reports it)."""
    return max(1, math.ceil(seconds * 1000))
