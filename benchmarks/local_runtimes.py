"""The local model through ONNX Runtime vs sentence-transformers: same quality, and how fast.

Both runtimes in one process, on STS-B dev (../shared/data/stsb/sts-dev.csv):

- Spearman x100 of each pair's cosine against the human scores, through each runtime,
  and the smallest cosine between the two runtimes' vectors of the same sentence;
- seconds to encode the first 2,500 distinct sentences, the runtimes interleaved
  round by round (same batch size, 32, sentence-transformers' default), so the
  machine's changing load hits both alike.

The ONNX graph is prepared first if the cache lacks it (LocalBackend().prepare()).

    .venv/bin/python -m benchmarks.local_runtimes [--rounds 3] [--throughput-only]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from benchmarks.stsb import DATA, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--throughput-only", action="store_true", help="skip the Spearman comparison")
    args = parser.parse_args()
    from semantic.backends.local import LocalBackend

    LocalBackend().prepare()
    runtimes = {name: LocalBackend(runtime=name).load() for name in ("sentence-transformers", "onnx")}
    pairs = load(DATA)
    sentences = sorted({s for _, a, b in pairs for s in (a, b)})
    index = {s: i for i, s in enumerate(sentences)}
    gold = np.array([score for score, _, _ in pairs])

    vectors = {}
    for name, model in {} if args.throughput_only else runtimes.items():
        vectors[name] = model.encode(sentences, normalize_embeddings=True)
        similarity = np.array([vectors[name][index[a]] @ vectors[name][index[b]] for _, a, b in pairs])
        print(f"STS-B dev Spearman x100, {name:<22} {spearmanr(gold, similarity).statistic * 100:.4f}")
    if vectors:
        agreement = np.sum(vectors["onnx"] * vectors["sentence-transformers"], axis=1)
        print(f"{len(sentences)} sentences, cosine between the runtimes' vectors: min {agreement.min():.7f}")

    sample = sentences[:2500]
    seconds: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(args.rounds):
        for name, model in runtimes.items():
            started = time.perf_counter()
            model.encode(sample, normalize_embeddings=True, batch_size=32)
            seconds[name].append(time.perf_counter() - started)
            print(f"  {name}: {seconds[name][-1]:.1f} s", flush=True)
    for name, times in seconds.items():
        rounded = ", ".join(f"{t:.1f}" for t in times)
        print(f"encode {len(sample)} sentences, {name:<22} {rounded} s ({len(sample) / min(times):.0f}/s at best)")


if __name__ == "__main__":
    main()
