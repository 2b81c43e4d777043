"""The local sentence-transformers backend with the packaged all-MiniLM-L6-v2 weights."""

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from semantic import SearchUnavailable, embed_pending, suspend_embedding
from semantic.backends import EmbeddingError
from semantic.backends.local import MINILM_SHA256, LocalBackend
from semantic.management.commands.semantic_prepare_model import Command
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


@pytest.mark.django_db(transaction=True)
def test_a_field_sized_for_another_model_stops_only_itself(semantic_settings):
    """A 768-dimensional field under the 384-dimensional local model is that field's
    mistake: its rows wait with the reason, and the other fields on the same backend
    are still embedded (seen in a benchmark: such a field used to pause every field for
    five minutes, as a bad API key would)."""
    from semantic.ratelimit import configuration_problem
    from tests.testapp.models import Passage

    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    with suspend_embedding():
        Passage.objects.create(text="Sized for Gemini.")
        Note.objects.create(text="A man is playing a guitar.")
    summary = embed_pending(Passage, Note)
    assert summary["testapp.Passage.embedding"]["stopped"] == LocalBackend.WRONG_SIZE.format(size=384, dimensions=768)
    assert summary["testapp.Note.embedding"]["embedded"] == 1
    assert Note.objects.get().embedding is not None
    assert Passage.objects.get().embedding is None
    assert configuration_problem() is None


@pytest.mark.django_db(transaction=True)
def test_searching_a_field_the_local_model_cannot_make_is_a_setting_to_fix_not_a_wait(semantic_settings, fake_gemini):
    """Embedded with Gemini at 768 dimensions, then searched on a machine without the key."""
    from tests.testapp.models import Passage

    Passage.objects.create(text="Sized for Gemini.")
    assert Passage.objects.filter(embedding__isnull=False).count() == 1
    semantic_settings(BACKEND="semantic.backends.local.LocalBackend")
    with pytest.raises(SearchUnavailable) as refused:
        list(Passage.objects.similar_to("gemini"))
    problem = LocalBackend.WRONG_SIZE.format(size=384, dimensions=768)
    assert str(refused.value) == SearchUnavailable.CONFIGURATION.format(problem=problem)
    assert (refused.value.kind, refused.value.retry_after) == ("config", None)
    assert "GEMINI_API_KEY" in problem and "Changing the model or size" in problem
    assert fake_gemini.request_count == 1  # the row's own embedding, nothing for the search


@pytest.mark.django_db
def test_embed_without_a_size_makes_the_fields_default_size_with_either_backend(semantic_settings, fake_gemini):
    """The README's semantic.embed(["any text"]) makes 384 numbers with the local model and
    with Gemini alike, as a field without dimensions= stores: a vector made on a machine
    without a key is searched with where one is set, not refused as 768-dimensional."""
    from django.core.cache import cache

    from semantic import embed
    from semantic.fields import DEFAULT_DIMENSIONS

    with suspend_embedding():
        Note.objects.create(text="note about invoices")
    for backend in ("semantic.backends.local.LocalBackend", "semantic.backends.gemini.GeminiBackend"):
        semantic_settings(BACKEND=backend, CACHE=None)
        cache.clear()
        embed_pending(Note)
        (vector,) = embed(["any text"], task_type="CLUSTERING")
        assert len(vector) == DEFAULT_DIMENSIONS == Note._meta.get_field("embedding").dimensions, backend
        assert list(Note.objects.similar_to(vector).values_list("text", flat=True)) == ["note about invoices"]
    sizes = [request["body"]["requests"][0]["outputDimensionality"] for request in fake_gemini.requests]
    assert sizes == [384, 384]  # the row's, then embed()'s
    assert len(embed(["any text"], dimensions=768)[0]) == 768


@pytest.mark.django_db
def test_a_text_is_encoded_once_for_every_task_type_and_once_per_task_type_with_gemini(semantic_settings, fake_gemini):
    """The local model has no task types: a search that needs the same text for two (a
    question field and an answer field's passages, in the demo) encodes it once. Gemini's
    vectors depend on the task type: one request each. Counted by the shared rate limit,
    which every model call passes (and, with a limit set, counts)."""
    from django.core.cache import cache

    from semantic import embed
    from semantic.backends import get_backend
    from semantic.models import RateLimit
    from semantic.ratelimit import limit_key

    def requests() -> int:
        state = RateLimit.objects.filter(key=limit_key(get_backend())).first()
        return state.requests if state else 0

    for backend, expected in (
        ("semantic.backends.local.LocalBackend", 1),
        ("semantic.backends.gemini.GeminiBackend", 2),
    ):
        semantic_settings(BACKEND=backend, REQUESTS_PER_MINUTE=1000)
        cache.clear()
        embed(["how do I reset my password"], task_type="SEMANTIC_SIMILARITY")
        embed(["how do I reset my password"], task_type="RETRIEVAL_QUERY")
        assert requests() == expected, backend
    sent = [request["body"]["requests"][0]["taskType"] for request in fake_gemini.requests]
    assert sent == ["SEMANTIC_SIMILARITY", "RETRIEVAL_QUERY"]


# ONNX Runtime against sentence-transformers, and the graph's cache.

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays the guitar on a stage while the crowd sings along.",
    "The stock market fell sharply today after the central bank raised interest rates.",
    "How do I reset my password?",
    "Ok",
    "Três pássaros voaram sobre o rio – naïve café, 東京.",
]
# About 480 word pieces: longer than the 256 the model reads (and than the 128 its tokenizer.json says).
LONG = " ".join(
    "Support tickets about invoices, refunds and passwords arrive every morning; "
    f"ticket {n} asks why the March invoice was charged twice to a card that expired."
    for n in range(16)
)


def cosines(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    """A cache with the graph exported once for this module."""
    root = tmp_path_factory.mktemp("graphs")
    LocalBackend(cache_dir=root).prepare()
    return root


@pytest.fixture(scope="module")
def onnx_model(graph_dir):
    from semantic.backends.local_onnx import OnnxEncoder

    model = LocalBackend(runtime="onnx", cache_dir=graph_dir).load()
    assert isinstance(model, OnnxEncoder)
    return model


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    model = LocalBackend(runtime="sentence-transformers").load()
    assert isinstance(model, SentenceTransformer)
    return model


def test_onnx_vectors_equal_sentence_transformers_for_real_sentences(onnx_model, st_model):
    onnx = onnx_model.encode(SENTENCES, batch_size=1)
    reference = st_model.encode(SENTENCES, normalize_embeddings=True, batch_size=1)
    assert onnx.shape == reference.shape == (len(SENTENCES), 384)
    assert cosines(onnx, reference).min() >= 0.99999
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-6)


def test_long_text_is_truncated_at_256_word_pieces_as_sentence_transformers_does(onnx_model, st_model):
    assert len(st_model.tokenizer(LONG)["input_ids"]) > 300
    onnx = onnx_model.encode([LONG])
    reference = st_model.encode([LONG], normalize_embeddings=True)
    assert cosines(onnx, reference)[0] >= 0.99999


def test_a_batch_of_mixed_lengths_equals_each_text_alone(onnx_model, st_model):
    """Padding the short texts up to the long one in one batch changes none of their vectors."""
    texts = [SENTENCES[4], LONG, SENTENCES[1], SENTENCES[0], LONG[:300]]
    onnx = onnx_model.encode(texts, batch_size=len(texts))
    reference = st_model.encode(texts, normalize_embeddings=True, batch_size=1)
    assert cosines(onnx, reference).min() >= 0.99999


def test_embed_through_the_onnx_runtime_matches_sentence_transformers(graph_dir):
    onnx = LocalBackend(runtime="onnx", cache_dir=graph_dir).embed(SENTENCES, task_type="CLUSTERING", dimensions=384)
    reference = LocalBackend(runtime="sentence-transformers").embed(SENTENCES, task_type="CLUSTERING", dimensions=384)
    assert cosines(onnx, reference).min() >= 0.99999


def test_a_prepared_graph_is_reused(graph_dir):
    from semantic.backends import local_export

    graph = local_export.cached_graph(graph_dir, MINILM_SHA256)
    before = graph.stat()
    assert LocalBackend(cache_dir=graph_dir).prepare() == (graph, False)
    after = graph.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_corrupt_graph_is_refused_and_rebuilt_by_the_command(graph_dir, semantic_settings):
    from semantic.backends import local_export
    from semantic.backends.local_onnx import OnnxEncoder

    graph = local_export.graph_path(graph_dir, MINILM_SHA256)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    assert local_export.cached_graph(graph_dir, MINILM_SHA256) is None

    semantic_settings(BACKEND="semantic.backends.local.LocalBackend", BACKEND_OPTIONS={"cache_dir": str(graph_dir)})
    out = StringIO()
    call_command("semantic_prepare_model", stdout=out)
    assert out.getvalue().strip() == Command.EXPORTED.format(graph=graph)
    assert local_export.cached_graph(graph_dir, MINILM_SHA256) == graph
    assert OnnxEncoder(LocalBackend().model_path(), graph).encode(["ok"]).shape == (1, 384)

    out = StringIO()
    call_command("semantic_prepare_model", stdout=out)
    assert out.getvalue().strip() == Command.REUSED.format(graph=graph)


def test_without_a_graph_the_onnx_runtime_says_how_to_prepare(tmp_path):
    with pytest.raises(EmbeddingError, match="run `manage.py semantic_prepare_model`"):
        LocalBackend(runtime="onnx", cache_dir=tmp_path).load()


def test_without_a_graph_auto_falls_back_to_sentence_transformers_and_says_how_to_prepare(tmp_path, caplog):
    from sentence_transformers import SentenceTransformer

    model = LocalBackend(cache_dir=tmp_path).load()
    assert isinstance(model, SentenceTransformer)
    assert "semantic_prepare_model" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_runtime_names_the_choices():
    with pytest.raises(EmbeddingError, match="auto, onnx, sentence-transformers"):
        LocalBackend(runtime="tensorflow")


def test_workers_share_the_cpus(monkeypatch, graph_dir):
    """Each of a cluster's workers gets its share of the CPUs for the model it loads, so two
    workers on two CPUs do not run four threads that preempt each other; OMP_NUM_THREADS wins."""
    from semantic.backends import local

    monkeypatch.setattr(local, "_cpu_share", None)
    monkeypatch.setattr(local, "_models", {})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert LocalBackend().share_cpus(16) == 1
    assert LocalBackend().share_cpus(2) == 4
    model = LocalBackend(runtime="onnx", cache_dir=graph_dir).load()
    assert model.session.get_session_options().intra_op_num_threads == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert LocalBackend().share_cpus(2) == 3
    assert local._cpu_share is None  # the runtimes read OMP_NUM_THREADS themselves


EMBED_ONE = """
from semantic.backends.local import LocalBackend
backend = LocalBackend(runtime="onnx", cache_dir={cache!r})
print(len(backend.embed(["a text"], task_type="RETRIEVAL_QUERY", dimensions=384)[0]))
"""


@pytest.mark.parametrize("writable", [True, False])
def test_onnx_runtime_writes_nothing_into_home_and_prints_no_telemetry_warning(graph_dir, tmp_path, writable):
    """ONNX Runtime's telemetry would write a device ID and an event database under
    ~/.cache/Microsoft/ as soon as it is imported (and upload them), and print a coloured
    warning to stderr, past LOGGING, where HOME is read-only: a web process or worker
    runs the model with no network and writes only to the graph cache."""
    if writable:
        home = tmp_path / "home"
        home.mkdir()
    else:
        (tmp_path / "a-file").touch()
        home = tmp_path / "a-file" / "home"  # nothing can be created under a file, not even by root
    environ = {k: v for k, v in os.environ.items() if k not in {"ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME"}}
    environ |= {
        "HOME": str(home),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    process = subprocess.run(
        [sys.executable, "-c", EMBED_ONE.format(cache=str(graph_dir))],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (process.returncode, process.stdout) == (0, "384\n"), process.stderr
    assert "telemetry" not in process.stderr.lower()
    if writable:
        assert list(home.rglob("*")) == []
