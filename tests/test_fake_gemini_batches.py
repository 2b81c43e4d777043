"""Batch embedding jobs of the fake Gemini server, through the real google-genai client."""

import json

import pytest
from google import genai
from google.genai import errors, types

from tests.fake_gemini import FakeGemini, fake_vector

pytestmark = pytest.mark.filterwarnings(r"ignore:batches.create_embeddings\(\) is experimental")

MODEL = "gemini-embedding-001"


def new_client(fake: FakeGemini) -> genai.Client:
    """Keep a reference: a client that is garbage collected closes its connection pool."""
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=fake.base_url))


@pytest.fixture
def client(fake_gemini: FakeGemini) -> genai.Client:
    return new_client(fake_gemini)


def create(
    client: genai.Client, texts: list[str], *, task_type: str = "RETRIEVAL_DOCUMENT", dimensions: int = 8
) -> types.BatchJob:
    return client.batches.create_embeddings(
        model=MODEL,
        src=types.EmbeddingsBatchJobSource(
            inlined_requests=types.EmbedContentBatch(
                contents=texts,
                config=types.EmbedContentConfig(task_type=task_type, output_dimensionality=dimensions),
            )
        ),
        config=types.CreateEmbeddingsBatchJobConfig(display_name="semantic-test"),
    )


def test_job_runs_to_one_vector_per_text(fake_gemini, client):
    fake_gemini.batch_polls_until_done = 3
    texts = ["first text", "second text", "third"]
    job = create(client, texts, task_type="SEMANTIC_SIMILARITY", dimensions=16)
    assert job.name.startswith("batches/fake-")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert not job.done

    states = []
    while not job.done:
        job = client.batches.get(name=job.name)
        states.append(job.state)
    assert states == ["JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    assert job.display_name == "semantic-test"
    assert job.model == f"models/{MODEL}"
    vectors = [r.response.embedding.values for r in job.dest.inlined_embed_content_responses]
    assert vectors == [fake_vector(text, 16, "SEMANTIC_SIMILARITY") for text in texts]
    assert all(len(v) == 16 for v in vectors)
    assert all(r.error is None for r in job.dest.inlined_embed_content_responses)
    assert fake_gemini.request_count == 0  # batch calls are not interactive requests
    assert len(fake_gemini.batch_requests) == 1


def test_request_carries_task_type_and_dimensionality(fake_gemini, client):
    job = create(client, ["a b", "c"], task_type="RETRIEVAL_DOCUMENT", dimensions=768)
    (record,) = fake_gemini.batch_requests
    assert record["name"] == job.name
    assert record["model"] == MODEL
    assert record["api_key"] == "test-key"
    batch = record["body"]["batch"]
    assert batch["displayName"] == "semantic-test"
    items = [r["request"] for r in batch["inputConfig"]["requests"]["requests"]]
    assert [i["content"]["parts"][0]["text"] for i in items] == ["a b", "c"]
    assert {i["taskType"] for i in items} == {"RETRIEVAL_DOCUMENT"}
    assert {i["outputDimensionality"] for i in items} == {768}


def test_a_new_client_resumes_a_job_by_name(fake_gemini, client):
    name = create(client, ["resumed later"]).name
    assert name in fake_gemini.jobs
    resumed = new_client(fake_gemini)
    job = resumed.batches.get(name=name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    (result,) = job.dest.inlined_embed_content_responses
    assert result.response.embedding.values == fake_vector("resumed later", 8, "RETRIEVAL_DOCUMENT")
    assert resumed.batches.get(name=name).state == types.JobState.JOB_STATE_SUCCEEDED


def test_failed_job(fake_gemini, client):
    fake_gemini.fail_next_batch("Batch quota exhausted.")
    name = create(client, ["x"]).name
    job = client.batches.get(name=name)
    assert job.state == types.JobState.JOB_STATE_FAILED
    assert job.done
    assert job.dest is None
    # google-genai does not map the operation's "error" for the Gemini Developer API: it is only in the JSON.
    assert job.error is None
    raw = client._api_client.request("get", name, {})
    assert json.loads(raw.body)["error"] == {"code": 13, "message": "Batch quota exhausted."}
    # Only the next job fails.
    assert client.batches.get(name=create(client, ["y"]).name).state == "JOB_STATE_SUCCEEDED"


def test_rejected_inputs_get_an_error_each(fake_gemini, client):
    fake_gemini.reject_batch_marker = "BAD"
    job = client.batches.get(name=create(client, ["good one", "BAD two", "good three"]).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    first, second, third = job.dest.inlined_embed_content_responses
    assert first.response.embedding.values == fake_vector("good one", 8, "RETRIEVAL_DOCUMENT")
    assert third.response.embedding.values == fake_vector("good three", 8, "RETRIEVAL_DOCUMENT")
    assert second.response is None
    assert second.error.code == 3
    assert second.error.message == "Request contains an invalid argument."


def test_when_every_input_is_rejected_the_errors_are_in_inlined_responses(fake_gemini, client):
    # google-genai tells embedding results from generate-content ones by an "embedding" key.
    fake_gemini.reject_batch_marker = "BAD"
    job = client.batches.get(name=create(client, ["BAD one", "BAD two"]).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest.inlined_embed_content_responses is None
    assert [r.error.message for r in job.dest.inlined_responses] == ["Request contains an invalid argument."] * 2


def test_cancel_and_delete(fake_gemini, client):
    fake_gemini.batch_polls_until_done = 5
    name = create(client, ["x"]).name
    client.batches.cancel(name=name)
    job = client.batches.get(name=name)
    assert job.state == types.JobState.JOB_STATE_CANCELLED
    assert job.done
    assert job.dest is None
    client.batches.delete(name=name)
    assert name not in fake_gemini.jobs
    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name=name)
    assert info.value.code == 404


def test_reset_forgets_jobs(fake_gemini, client):
    fake_gemini.batch_polls_until_done = 2
    fake_gemini.reject_batch_marker = "BAD"
    fake_gemini.fail_next_batch("boom")
    create(client, ["x"])
    fake_gemini.fail_next_batch("boom")
    fake_gemini.reset()
    assert fake_gemini.jobs == {}
    assert fake_gemini.batch_requests == []
    job = client.batches.get(name=create(client, ["BAD"]).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest.inlined_embed_content_responses[0].response.embedding.values == fake_vector(
        "BAD", 8, "RETRIEVAL_DOCUMENT"
    )
