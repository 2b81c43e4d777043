"""Classification throughput and clustering time at many rows (``benchmarks.banking77 --rows N``).

Synthetic rows: each is a real Banking77 vector plus Gaussian noise (about 0.9
cosine similarity to it, renormalised) with that message's intent; 90% keep their
label, 10% are left unlabelled to be predicted. They are written with COPY into
tests.topicapp.Ticket, which is indexed afterwards (HNSW, m=16, ef_construction=64).
The direct side runs scikit-learn on the same vectors held in memory.

Run after ``benchmarks.banking77`` (whose stored, worker-made vectors of the 8,002
training messages it starts from), or through it with ``--rows``:

    .venv/bin/python -m benchmarks.banking77_scale --rows 100000 [--linear]

``--linear`` adds training and applying the logistic regression at that size
(minutes of lbfgs on a busy two-core machine).
"""

from __future__ import annotations

import time

import numpy as np

#: Noise per component: 0.025 x sqrt(384) = 0.49 of a unit vector, similarity about 0.9.
NOISE = 0.025
UNLABELLED = 0.10
SEED = 0


def synthetic(rows: int, vectors: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors, labels and a mask of the rows to leave unlabelled."""
    rng = np.random.default_rng(SEED)
    origin = np.arange(rows) % len(vectors)
    made = vectors[origin] + NOISE * rng.normal(size=(rows, vectors.shape[1])).astype(np.float32)
    made /= np.linalg.norm(made, axis=1, keepdims=True)
    return made.astype(np.float32), np.array(labels)[origin], rng.random(rows) < UNLABELLED


def load(made: np.ndarray, labels: np.ndarray, hidden: np.ndarray) -> list[int]:
    from django.db import connection
    from pgvector import Vector

    from semantic.registry import get_embedding_field
    from tests.topicapp.models import Ticket

    field = get_embedding_field(Ticket)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE topicapp_ticket RESTART IDENTITY")
        cursor.execute("DROP INDEX IF EXISTS ticket_embedding_hnsw")
        with cursor.copy("COPY topicapp_ticket (text, category, created, embedding) FROM STDIN") as copy:
            for i, (vector, label, hide) in enumerate(zip(made, labels, hidden)):
                copy.write_row(
                    (f"synthetic {label} #{i}", "" if hide else label, "2026-11-27", Vector(vector).to_text())
                )
        cursor.execute(
            "UPDATE topicapp_ticket SET embedding_embedded_hash = embedding_source_hash, embedding_model = %s",
            [field.spec()],
        )
        loaded = time.monotonic() - started
        cursor.execute("SET maintenance_work_mem = '2GB'")
        cursor.execute(
            "CREATE INDEX ticket_embedding_hnsw ON topicapp_ticket "
            "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        cursor.execute("VACUUM ANALYZE topicapp_ticket")
    print(
        f"loaded {len(made)} synthetic rows in {loaded:.0f}s, HNSW built in {time.monotonic() - started - loaded:.0f}s"
    )
    return list(range(1, len(made) + 1))


def throughput(rows: int, vectors: np.ndarray, labels: list[str], *, linear: bool = False) -> None:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import v_measure_score
    from sklearn.neighbors import KNeighborsClassifier

    from semantic.classify import predict_labels
    from semantic.clusters import cluster
    from semantic.linear import DEFAULT_C, MAX_ITER, train_classifier
    from semantic.models import Classifier
    from tests.topicapp.models import Ticket

    made, made_labels, hidden = synthetic(rows, vectors, labels)
    pks = np.array(load(made, made_labels, hidden))
    truth = dict(zip(pks[hidden].tolist(), made_labels[hidden]))
    print(f"{rows} rows: {int((~hidden).sum())} labelled, {len(truth)} to predict")

    def report(name: str, predicted: dict, seconds: float) -> None:
        correct = sum(predicted.get(pk) == label for pk, label in truth.items())
        print(
            f"  {name}: {len(truth) / seconds:,.0f} rows/s ({seconds:.1f}s), accuracy {100 * correct / len(truth):.2f}"
        )

    everything = Ticket.objects.all()
    started = time.monotonic()
    predicted = {p.pk: p.label for p in predict_labels(everything, k=10)}
    report("ORM k-NN vote (k=10, HNSW)", predicted, time.monotonic() - started)

    started = time.monotonic()
    knn = KNeighborsClassifier(n_neighbors=10, metric="cosine", weights="distance").fit(
        made[~hidden], made_labels[~hidden]
    )
    guesses = knn.predict(made[hidden])
    report(
        "direct k-NN vote (k=10, exact, scikit-learn)",
        dict(zip(pks[hidden].tolist(), guesses)),
        time.monotonic() - started,
    )

    if linear:
        Classifier.objects.all().delete()
        started = time.monotonic()
        train_classifier(Ticket, "category")
        trained = time.monotonic() - started
        started = time.monotonic()
        predicted = {p.pk: p.label for p in predict_labels(everything, method="linear")}
        report(f"ORM logistic regression (trained in {trained:.0f}s)", predicted, time.monotonic() - started)

        started = time.monotonic()
        lr = LogisticRegression(C=DEFAULT_C, max_iter=MAX_ITER).fit(made[~hidden], made_labels[~hidden])
        trained = time.monotonic() - started
        started = time.monotonic()
        guesses = lr.predict(made[hidden])
        report(
            f"direct logistic regression (trained in {trained:.0f}s)",
            dict(zip(pks[hidden].tolist(), guesses)),
            time.monotonic() - started,
        )

    started = time.monotonic()
    topics = cluster(everything, k=77, seed=SEED)
    seconds = time.monotonic() - started
    group = {pk: topic.number for topic in topics for pk in topic.pks}
    orm_v = 100 * v_measure_score(made_labels, [group[pk] for pk in pks.tolist()])
    print(f"  ORM cluster(k=77), streamed mini-batch k-means: {seconds:.1f}s, V-measure {orm_v:.2f}")
    started = time.monotonic()
    direct = MiniBatchKMeans(n_clusters=77, random_state=SEED, n_init=3).fit(made)
    seconds = time.monotonic() - started
    direct_v = 100 * v_measure_score(made_labels, direct.labels_)
    print(f"  direct MiniBatchKMeans(k=77) in memory: {seconds:.1f}s, V-measure {direct_v:.2f}")


def main() -> None:
    import argparse

    from benchmarks.common import setup

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--linear", action="store_true", help="also train and apply the logistic regression")
    args = parser.parse_args()
    setup()
    from semantic.registry import get_embedding_field
    from tests.topicapp.models import Ticket

    field = get_embedding_field(Ticket)
    stored = Ticket.objects.filter(field.searchable()).exclude(category="").order_by("pk")
    pairs = list(stored.values_list("embedding", "category"))
    if not pairs:
        raise SystemExit("No embedded, labelled tickets: run `python -m benchmarks.banking77` first.")
    print(f"starting from {len(pairs)} stored Banking77 training vectors")
    vectors = np.array([vector for vector, _ in pairs], dtype=np.float32)
    throughput(args.rows, vectors, [label for _, label in pairs], linear=args.linear)


if __name__ == "__main__":
    main()
