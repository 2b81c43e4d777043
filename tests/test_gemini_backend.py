"""The Gemini backend through the real google-genai client and the fake server."""

import asyncio
import json
import math
import sys
import traceback

import pytest
from django.conf import settings
from django.views.debug import technical_500_response

from semantic.backends import EmbeddingError
from semantic.backends.gemini import FIX_KEY, HTML_ANSWER, MAX_EXCERPT, UNSENDABLE_KEY, GeminiBackend
from tests.fake_gemini import (
    BAD_KEY,
    MODEL_NOT_FOUND,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    FakeGemini,
    api_error,
    fake_vector,
)


def backend(fake, **options):
    return GeminiBackend(base_url=fake.base_url, **options)


def test_one_request_for_a_list_of_texts(fake_gemini):
    vectors = backend(fake_gemini).embed(
        ["first text", "second text", "third"], task_type="SEMANTIC_SIMILARITY", dimensions=768
    )
    assert len(vectors) == 3
    assert fake_gemini.request_count == 1
    request = fake_gemini.requests[0]
    assert request["model"] == "gemini-embedding-001"
    assert request["api_key"] == settings.TEST_API_KEY
    items = request["body"]["requests"]
    assert [i["content"]["parts"][0]["text"] for i in items] == ["first text", "second text", "third"]
    assert {i["taskType"] for i in items} == {"SEMANTIC_SIMILARITY"}
    assert {i["outputDimensionality"] for i in items} == {768}


def test_the_async_client_sends_the_key_too(fake_gemini):
    """Nothing here calls ``client.aio`` yet; the first caller must not send the stand-in key."""
    client = backend(fake_gemini).client
    asyncio.run(client.aio.models.embed_content(model="gemini-embedding-001", contents=["async text"]))
    (request,) = fake_gemini.requests
    assert request["api_key"] == settings.TEST_API_KEY


def test_multimodal_models_get_one_content_per_text(fake_gemini):
    # google-genai joins plain strings into one content for gemini-embedding-2 style models.
    vectors = backend(fake_gemini, model="gemini-embedding-2-preview").embed(
        ["first text", "second text"], task_type="SEMANTIC_SIMILARITY", dimensions=768
    )
    assert len(vectors) == 2 and vectors[0] != vectors[1]
    (request,) = fake_gemini.requests
    assert request["model"] == "gemini-embedding-2-preview"
    assert [len(i["content"]["parts"]) for i in request["body"]["requests"]] == [1, 1]


def test_reduced_dimensions_are_normalised(fake_gemini):
    (vector,) = backend(fake_gemini).embed(["hello world"], task_type="CLUSTERING", dimensions=256)
    raw = fake_vector("hello world", 256)
    assert math.isclose(math.sqrt(sum(x * x for x in raw)), 3.0)  # the server does not normalise
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-6)


def test_titles_are_sent_per_request(fake_gemini):
    backend(fake_gemini).embed(
        ["a", "b", "c"], task_type="RETRIEVAL_DOCUMENT", dimensions=768, titles=["T1", "T1", "T2"]
    )
    assert fake_gemini.request_count == 2
    assert [r["title"] for r in fake_gemini.requests[0]["body"]["requests"]] == ["T1", "T1"]
    assert [r["title"] for r in fake_gemini.requests[1]["body"]["requests"]] == ["T2"]


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (400, False), (403, False)])
def test_errors_are_classified(fake_gemini, status, transient):
    fake_gemini.fail_next(status, retry_after="7" if status == 429 else None)
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.transient is transient
    assert str(status) in str(info.value)
    if status == 429:
        assert info.value.retry_after == 7.0


def test_malformed_json_is_transient(fake_gemini):
    fake_gemini.malformed_next()
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.transient
    assert "not JSON" in str(info.value)


@pytest.fixture
def slow_server():
    """A fake server of its own for a request the client gives up on: it may reach a server
    after the test has ended, and the shared one would hand it the next test's fault."""
    with FakeGemini(latency=2.0) as server:
        yield server


def test_timeout_is_transient(slow_server):
    with pytest.raises(EmbeddingError) as info:
        backend(slow_server, timeout=0.3).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.transient


def test_missing_key_says_how_to_fix(fake_gemini):
    b = backend(fake_gemini)
    b.api_key = None
    with pytest.raises(EmbeddingError, match="GEMINI_API_KEY"):
        b.embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert fake_gemini.request_count == 0


@pytest.mark.parametrize("pasted", ["\u201c{key}\u201d", "{key}\u200b", "{key}\nsecond line"])
def test_a_key_no_header_can_carry_is_a_configuration_error_and_nothing_is_sent(fake_gemini, pasted):
    """Quotes copied from a document with the key made httpx fail to write the header: read as
    a network error, it was retried for ever and searches said "try again later"."""
    key = settings.TEST_API_KEY
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini, api_key=pasted.format(key=key)).embed(
            ["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768
        )
    assert info.value.kind == "config" and str(info.value) == UNSENDABLE_KEY
    assert FIX_KEY in UNSENDABLE_KEY and key not in UNSENDABLE_KEY
    assert fake_gemini.request_count == 0


def test_key_never_in_error_messages(fake_gemini):
    key = settings.TEST_API_KEY
    fake_gemini.fail_next(400, body='{"error": {"code": 400, "message": "API key %s is invalid"}}' % key)
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert key not in str(info.value)
    assert "[redacted]" in str(info.value)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("inf", 3600.0), ("1e15", 3600.0), ("-5", 0.0), ("soon", None), ("nan", None)],
)
def test_retry_after_is_read_within_bounds(fake_gemini, header, seconds):
    fake_gemini.fail_next(429, retry_after=header)
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.transient
    assert info.value.retry_after == seconds


@pytest.mark.parametrize(
    ("status", "body", "kind", "fix"),
    [
        (400, BAD_KEY, "config", "SEMANTIC['API_KEY']"),
        (401, UNAUTHENTICATED, "config", "SEMANTIC['API_KEY']"),
        (403, PERMISSION_DENIED, "config", "SEMANTIC['API_KEY']"),
        (404, MODEL_NOT_FOUND, "config", "SEMANTIC['MODEL']"),
        (400, api_error(400, "Request contains an invalid argument.", "INVALID_ARGUMENT"), "bad_input", None),
        (500, api_error(500, "Internal error.", "INTERNAL"), "transient", None),
    ],
)
def test_configuration_errors_are_told_apart_from_bad_texts(fake_gemini, status, body, kind, fix):
    fake_gemini.fail_next(status, body=body)
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.kind == kind
    assert info.value.transient is (kind == "transient")
    if fix:
        assert fix in str(info.value)
    assert settings.TEST_API_KEY not in str(info.value)


def test_a_key_with_surrounding_whitespace_is_stripped_and_redacted(fake_gemini):
    key = settings.TEST_API_KEY
    fake_gemini.fail_next(400, body=api_error(400, f"API key {key} is invalid", "INVALID_ARGUMENT"))
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini, api_key=f"  {key}\n").embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert fake_gemini.requests[0]["api_key"] == key
    assert key not in str(info.value) and "[redacted]" in str(info.value)
    assert backend(fake_gemini, api_key=f" {key}\t").api_key == key  # one key, one rate limit


@pytest.mark.parametrize(("status", "retry_after"), [(400, None), (429, "soon"), (429, "inf"), (500, None)])
def test_the_debug_page_never_shows_the_key(fake_gemini, settings, semantic_settings, rf, status, retry_after):
    """With DEBUG=True, Django's technical 500 page lists every frame's local variables
    (this test's frame too, so it names the key only through settings)."""
    settings.DEBUG = True
    semantic_settings(API_KEY=f" {settings.TEST_API_KEY} ")
    body = api_error(status, f"key {settings.TEST_API_KEY} refused", "FAKE")
    fake_gemini.fail_next(status, retry_after=retry_after, body=body)
    del body
    try:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    except Exception:
        response = technical_500_response(rf.get("/search"), *sys.exc_info())
    page = response.content.decode()
    assert "EmbeddingError" in page
    assert settings.TEST_API_KEY not in page


@pytest.mark.parametrize("status", [400, 429, 500])
def test_no_frame_of_the_sdk_holds_the_key_when_a_call_fails(fake_gemini, status, monkeypatch):
    """Sentry's google-genai integration, on by default wherever the SDK is installed, wraps
    ``Models.embed_content`` and reports what it raises, with every frame's local variables,
    before this backend catches it. The same wrapper here keeps the exception instead."""
    from google.genai.models import Models

    seen = []
    embed_content = Models.embed_content

    def reporting(*args, **kwargs):
        try:
            return embed_content(*args, **kwargs)
        except Exception as exc:
            seen.append(exc)
            raise

    monkeypatch.setattr(Models, "embed_content", reporting)
    fake_gemini.fail_next(status)
    with pytest.raises(EmbeddingError):
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert fake_gemini.requests[-1]["api_key"] == settings.TEST_API_KEY  # sent all the same
    (sdk_error,) = seen
    frames = [frame for frame, _ in traceback.walk_tb(sdk_error.__traceback__)]
    assert any(frame.f_code.co_filename.endswith("_api_client.py") for frame in frames)
    for frame in frames:
        for name, value in frame.f_locals.items():
            assert settings.TEST_API_KEY not in repr(value), (frame.f_code.co_name, name)


def test_any_backend_s_retry_after_is_kept_within_bounds():
    """Other backends build EmbeddingErrors themselves; the bounds hold for them too."""
    assert EmbeddingError("x", kind="transient", retry_after=float("inf")).retry_after == 3600.0
    assert EmbeddingError("x", kind="transient", retry_after=float("nan")).retry_after is None
    assert EmbeddingError("x", kind="transient", retry_after=-1.0).retry_after == 0.0


def test_the_configured_key_is_read_stripped(semantic_settings, monkeypatch):
    from semantic.conf import semantic_settings as conf

    semantic_settings(API_KEY="  AIzaPADDED\n")
    assert conf.API_KEY == "AIzaPADDED"
    monkeypatch.setenv("GEMINI_API_KEY", " AIzaFROM-ENV ")
    semantic_settings(API_KEY="   ")
    assert conf.API_KEY == "AIzaFROM-ENV"


def test_redaction_finds_a_padded_secret_in_its_stripped_form():
    from semantic.text import redact

    assert redact("key AIzaPADDED refused", "  AIzaPADDED\n") == "key [redacted] refused"


@pytest.mark.parametrize(
    ("embedding", "problem"),
    [
        ('{"values": [NaN, 0.5, 0.5]}', "a vector holding NaN or infinite values"),
        ('{"values": [1e400, 0.5, 0.5]}', "a vector holding NaN or infinite values"),  # infinite once parsed
        ('{"values": [0.0, 0.0, 0.0]}', "a vector of zeros"),
        ('{"values": []}', "an empty vector"),
        ("{}", "an empty vector"),
    ],
)
def test_an_unusable_vector_is_a_malformed_answer_to_retry(fake_gemini, embedding, problem):
    """Caught before normalising, which would spread one NaN over the whole vector."""
    fake_gemini.bad_embeddings_next(embedding)
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x", "y"], task_type="SEMANTIC_SIMILARITY", dimensions=3)
    assert info.value.kind == "transient"
    assert str(info.value) == f"Gemini API sent a malformed answer: {problem}."


def test_a_vector_of_another_size_is_passed_on_for_the_caller_to_place(fake_gemini):
    """Only the caller knows which field it misfits (and a key is not at fault)."""
    fake_gemini.bad_embeddings_next('{"values": [%s]}' % ", ".join(["0.5"] * 3072))
    (vector,) = backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=384)
    assert vector == [0.5] * 3072


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [("30s", 30.0), ("45.837906927s", 45.837906927), ("0s", 0.0), ("86400s", 3600.0), ("-3s", 0.0)]
    + [(bad, None) for bad in ("soon", "30", "1e3s", "nans", "30 s", "")],
)
def test_a_429_s_retry_info_in_the_body_is_its_wait(fake_gemini, delay, seconds):
    """The Gemini API gives its 429's wait as RetryInfo.retryDelay (a protobuf Duration), no header."""
    fake_gemini.fail_next(429, body=api_error(429, "Quota exceeded.", "RESOURCE_EXHAUSTED", retry_delay=delay))
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.transient
    assert info.value.retry_after == seconds


def test_a_retry_after_header_wins_over_the_body(fake_gemini):
    body = api_error(429, "Quota exceeded.", "RESOURCE_EXHAUSTED", "RATE_LIMIT_EXCEEDED", retry_delay="30s")
    fake_gemini.fail_next(429, retry_after="7", body=body)
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.retry_after == 7.0


def test_a_time_out_under_a_millisecond_is_still_a_time_out(slow_server):
    """The SDK counts whole milliseconds and takes 0 for none: 0.4 ms must not become 0."""
    with pytest.raises(EmbeddingError) as info:
        backend(slow_server, timeout=0.0004).embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)
    assert info.value.transient


def test_an_html_error_page_is_named_by_its_title_and_kept_short(fake_gemini):
    key = settings.TEST_API_KEY
    page = (
        "<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>"
        + "body{margin:0;padding:0}" * 1000
        + f"</style></head><body><h1>Bad Gateway</h1><p>upstream {key} failed</p></body></html>"
    )
    fake_gemini.fail_next(502, body=page)
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini, api_key=key).embed(["hello"], task_type="SEMANTIC_SIMILARITY", dimensions=128)
    assert str(info.value) == f"Gemini API error 502: 502 Bad Gateway ({HTML_ANSWER})"


def test_a_long_body_is_cut_after_the_key_is_redacted(fake_gemini):
    key = settings.TEST_API_KEY
    body = "x" * (MAX_EXCERPT - 5) + key + "y" * 1000  # the cut falls inside the key
    fake_gemini.fail_next(400, body=json.dumps({"error": {"code": 400, "message": body, "status": "INVALID"}}))
    with pytest.raises(EmbeddingError) as info:
        backend(fake_gemini, api_key=key).embed(["hello"], task_type="SEMANTIC_SIMILARITY", dimensions=128)
    message = str(info.value)
    assert key[:4] not in message.removeprefix("Gemini API error 400: ")
    assert len(message) < MAX_EXCERPT + 40
