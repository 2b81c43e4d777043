"""The local sentence-transformers backend with the packaged all-MiniLM-L6-v2 weights."""

import os

import numpy as np
import pytest

from semantic import embed_pending
from semantic.backends import EmbeddingError
from semantic.backends.local import LocalBackend
from tests.testapp.models import Note


@pytest.fixture(scope="module")
def local():
    return LocalBackend()


def test_paraphrase_is_closer_than_an_unrelated_sentence(local):
    a, b, c = np.array(
        local.embed(
            [
                "How do I reset my password?",
                "I forgot my password, how can I change it?",
                "The train to Paris is late.",
            ],
            task_type="SEMANTIC_SIMILARITY",
            dimensions=384,
        )
    )
    assert np.isclose(np.linalg.norm(a), 1.0, atol=1e-5)
    assert a @ b > 0.6
    assert a @ c < 0.2


def test_wrong_dimensions_say_what_to_set(local):
    with pytest.raises(EmbeddingError, match="dimensions=384"):
        local.embed(["x"], task_type="SEMANTIC_SIMILARITY", dimensions=768)


def test_a_tampered_model_file_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    backend = LocalBackend(path=str(tmp_path), sha256="0" * 64)
    with pytest.raises(EmbeddingError, match="SHA-256"):
        backend.load()


@pytest.mark.django_db(transaction=True)
def test_rows_embedded_through_the_field(semantic_settings, fake_gemini):
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    Note.objects.create(text="A man is playing a guitar.")
    Note.objects.create(text="Someone plays the guitar.")
    Note.objects.create(text="The stock market fell sharply today.")
    embed_pending()
    vectors = [np.array(n.embedding) for n in Note.objects.order_by("pk")]
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert fake_gemini.request_count == 0
    assert Note.objects.first().embedding_spec == "local:all-MiniLM-L6-v2|SEMANTIC_SIMILARITY|384"


@pytest.mark.django_db
def test_embed_without_a_size_uses_the_backends_own(semantic_settings):
    """The README's semantic.embed(["any text"], task_type="CLUSTERING") with the local model."""
    from django.core.cache import cache

    from semantic import embed

    semantic_settings(BACKEND="semantic.backends.local.LocalBackend", CACHE=None)
    cache.clear()
    (vector,) = embed(["any text"], task_type="CLUSTERING")
    assert len(vector) == 384


def test_workers_share_the_cpus(monkeypatch):
    """Each of a cluster's workers gets its share of the CPUs, so two workers on two CPUs
    do not run four torch threads that preempt each other; OMP_NUM_THREADS wins."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    try:
        assert LocalBackend().share_cpus(2) == 4
        assert torch.get_num_threads() == 4
        assert LocalBackend().share_cpus(16) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert LocalBackend().share_cpus(2) == 3
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
