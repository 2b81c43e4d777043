"""The local model run by ONNX Runtime, with the ``tokenizers`` library: no PyTorch at run time.

Importing sentence-transformers takes seconds (PyTorch, transformers, scikit-learn,
scipy); onnxruntime and tokenizers take a fraction of a second. So a process that only
encodes (the web server, each worker) is ready in about a second, and the first search
after ``runserver`` does not wait for PyTorch.

The graph holds the transformer only (semantic/backends/local_export.py writes it);
what sentence-transformers adds on top is done here, the same way:

- strip each text, then tokenize with the model's ``tokenizer.json``, truncated at
  ``max_seq_length`` from ``sentence_bert_config.json`` (256 for all-MiniLM-L6-v2,
  not the 128 that its ``tokenizer.json`` itself carries);
- mean of the token vectors over the attention mask (the ``Pooling`` module's
  ``pooling_mode_mean_tokens``);
- L2 normalisation.

Only models whose sentence-transformers pipeline is exactly that are run here
(``supports()``); others stay on sentence-transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
POOLING_MODES = (
    "pooling_mode_cls_token",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


#: ONNX Runtime's documented switch for its telemetry (its Privacy.md, "Disabling Telemetry").
TELEMETRY_SWITCH = "ORT_DISABLE_TELEMETRY"


def import_onnxruntime() -> Any:
    """onnxruntime, with its telemetry off unless the project set ``ORT_DISABLE_TELEMETRY`` itself.

    Its official builds, as soon as the module is imported, write a device ID and an event
    database under ``~/.cache/Microsoft/`` (``$XDG_CACHE_HOME/Microsoft/``), to upload to Microsoft;
    where HOME is read-only they print a coloured warning to stderr instead, past the
    project's LOGGING. The local model promises no network and writes only its graph cache.
    The switch is read once, when onnxruntime is imported, so it is set just before;
    ``onnxruntime.disable_telemetry_events()`` would come after the files were written.
    """
    os.environ.setdefault(TELEMETRY_SWITCH, "1")
    import onnxruntime

    return onnxruntime


def max_seq_length(model_dir: Path) -> int:
    return int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])


def supports(model_dir: Path) -> bool:
    """Whether the model directory is a transformer, mean pooling and (optionally) normalisation, nothing else."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        types = [module["type"] for module in modules]
        if types not in ([TRANSFORMER, POOLING], [TRANSFORMER, POOLING, NORMALIZE]):
            return False
        pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (
        (model_dir / "tokenizer.json").is_file()
        and not config.get("do_lower_case")
        and "max_seq_length" in config
        and pooling.get("pooling_mode_mean_tokens") is True
        and not any(pooling.get(mode) for mode in POOLING_MODES)
    )


class OnnxEncoder:
    """Encodes texts like ``SentenceTransformer.encode(..., normalize_embeddings=True)``.

    ``encode`` and ``get_embedding_dimension`` take the same arguments as
    sentence-transformers' so callers of ``LocalBackend.load()`` need not know which
    runtime they got.
    """

    def __init__(self, model_dir: Path, graph: Path, threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        onnxruntime = import_onnxruntime()

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_seq_length(model_dir))
        padding = self.tokenizer.padding or {}
        self.tokenizer.enable_padding(pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"))
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.inputs = {item.name for item in self.session.get_inputs()}
        self.dimensions = int(self.session.get_outputs()[0].shape[-1])

    def get_embedding_dimension(self) -> int:
        return self.dimensions

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, **options: Any) -> np.ndarray:
        """Unit vectors, one row per text, in the order given.

        Texts are batched by length (longest first, as sentence-transformers does) so a
        batch pads little. ``options`` are sentence-transformers' (``normalize_embeddings``,
        ``convert_to_numpy``, ``show_progress_bar``...): vectors are always normalised
        numpy rows, which is what this project asks for.
        """
        single = isinstance(sentences, str)
        texts = [str(text).strip() for text in ([sentences] if single else sentences)]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            vectors[chosen] = self._encode_batch([texts[i] for i in chosen])
        return vectors[0] if single else vectors

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (tokens,) = self.session.run(["last_hidden_state"], feed)
        weights = mask[..., None].astype(np.float32)
        pooled = (tokens * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
