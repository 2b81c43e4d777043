"""How steady and how costly the automatic number of topics is, with one k-means start
per candidate k (the baseline: what ``choose_k`` used before) and with ``CHOOSE_K_INITS``.

``semantic.clusters.choose_k`` orders its sample by a hash of each row's key, so the
order, and with one start the chosen k, depends on the keys. Here the same vectors
(Banking77 messages, embedded by the local model once) are shuffled ``SHUFFLES`` times
and the k each setting picks is counted, for three intents and for five (15 messages
each, as tests/test_admin_labels.py and tests/test_clusters.py use). Then both settings
choose k once for the first 2,000 messages, timed (k from 2 to ``MAX_AUTO_K``).

    uptime; .venv/bin/python -m benchmarks.choose_k; uptime
"""

from __future__ import annotations

import collections
import os
import time

import numpy as np

from benchmarks.banking77 import load

SHUFFLES = int(os.environ.get("CHOOSE_K_SHUFFLES", 60))
THREE = ["exchange_rate", "lost_or_stolen_phone", "terminate_account"]
FIVE = ["card_arrival", "exchange_rate", "passcode_forgotten", "lost_or_stolen_phone", "terminate_account"]


def main() -> None:
    from benchmarks.common import setup

    setup(BACKEND="semantic.backends.local.LocalBackend")
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    from semantic.backends import get_backend
    from semantic.clusters import CHOOSE_K_INITS, MAX_AUTO_K

    texts, labels = load()
    backend = get_backend()

    def vectors(chosen: list[str]) -> np.ndarray:
        found = collections.defaultdict(list)
        for text, label in zip(texts, labels):
            if label in chosen and len(found[label]) < 15:
                found[label].append(text)
        return embed([t for label in chosen for t in found[label]])

    def embed(batch: list[str]) -> np.ndarray:
        made = np.array(backend.embed(batch, task_type="SEMANTIC_SIMILARITY", dimensions=384), dtype=np.float32)
        return made / np.linalg.norm(made, axis=1, keepdims=True)

    def choose(x: np.ndarray, starts: int) -> int:
        scores = {}
        for k in range(2, min(MAX_AUTO_K, len(x) - 1) + 1):
            found = KMeans(n_clusters=k, random_state=0, n_init=starts).fit_predict(x)
            scores[k] = silhouette_score(x, found, metric="cosine")
        return max(scores, key=lambda k: (scores[k], -k))

    for chosen in (THREE, FIVE):
        x = vectors(chosen)
        for starts in (1, CHOOSE_K_INITS):
            rng = np.random.default_rng(0)
            picked = collections.Counter(choose(x[rng.permutation(len(x))], starts) for _ in range(SHUFFLES))
            right = picked[len(chosen)]
            print(
                f"{len(chosen)} intents, {starts} start(s): k = {dict(sorted(picked.items()))}; "
                f"{right} of {SHUFFLES} shuffles chose {len(chosen)}"
            )

    sample = embed(texts[:2000])
    took = {}
    for starts in (1, CHOOSE_K_INITS):
        started = time.monotonic()
        choose(sample, starts)
        took[starts] = time.monotonic() - started
    print(
        f"2,000 messages, k 2..{MAX_AUTO_K}: 1 start {took[1]:.2f} s, {CHOOSE_K_INITS} starts "
        f"{took[CHOOSE_K_INITS]:.2f} s, ratio {took[CHOOSE_K_INITS] / took[1]:.2f}"
    )


if __name__ == "__main__":
    main()
