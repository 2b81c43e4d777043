"""Banking77 classification and clustering through the ORM vs scikit-learn called directly.

../shared/data/banking77/train.csv is split 80/20, stratified by intent (seed 0); with
``--test FILE`` (the same layout: ``text,category``, such as the evaluation split) the
whole training file trains and FILE is the hold-out. Both parts are stored as rows of
tests.topicapp.Ticket (the hold-out without its label) and a real django-q2 worker
embeds them with the local backend (all-MiniLM-L6-v2). The hold-out's labels are then
predicted through the ORM (``predict_labels``: nearest-neighbour vote over the HNSW
index, and the stored logistic regression) and the hold-out is grouped with
``cluster(k=n)``, n the number of intents in the hold-out (77 in Banking77). In the
same run, the same model's vectors computed directly feed scikit-learn's
LogisticRegression, a 5-nearest-neighbour vote and KMeans(k=n).

    .venv/bin/python -m benchmarks.banking77
    .venv/bin/python -m benchmarks.banking77 --rows 100000   # adds the throughput part
    .venv/bin/python -m benchmarks.banking77 --test ../shared/data/banking77/test.csv

``--rows N`` adds classification throughput and clustering time at N rows. The
rows are synthetic: the real vectors repeated with noise (similarity about 0.9 to
their original) and the original's label, written straight into the table, which is
then indexed (embedding N real sentences would take this machine an hour).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BASE_DIR, setup, start_worker, wait_for

DATA = BASE_DIR.parent / "shared" / "data" / "banking77" / "train.csv"
SEED = 0


def load(path: Path = DATA) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"].strip())
            labels.append(row["category"])
    return texts, labels


def timed(function):
    started = time.monotonic()
    result = function()
    return result, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=0, help="also measure throughput at this many rows")
    parser.add_argument("--linear", action="store_true", help="with --rows: the logistic regression too")
    parser.add_argument("--train", type=Path, default=DATA, help="text,category CSV (default: %(default)s)")
    parser.add_argument("--test", type=Path, help="a hold-out CSV of the same layout (default: 20%% of --train)")
    args = parser.parse_args()
    setup()
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import v_measure_score
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    from semantic import suspend_embedding
    from semantic.backends.local import LocalBackend
    from semantic.classify import predict_labels
    from semantic.clusters import KMEANS_INITS, cluster
    from semantic.linear import DEFAULT_C, MAX_ITER, train_classifier
    from semantic.models import Classifier
    from semantic.tasks import queue_pending
    from tests.topicapp.models import Ticket

    if args.test:
        (train_x, train_y), (test_x, test_y) = load(args.train), load(args.test)
        texts, labels = train_x + test_x, train_y + test_y
        print(f"{args.train.name}: {len(train_x)} training rows; {args.test.name}: {len(test_x)} hold-out rows")
        unseen = set(test_y) - set(train_y)
        if unseen:
            print(f"hold-out intents never seen in training (no method can predict them): {len(unseen)}")
    else:
        texts, labels = load(args.train)
        train_x, test_x, train_y, test_y = train_test_split(
            texts, labels, test_size=0.2, stratify=labels, random_state=SEED
        )
        print(f"Banking77 {args.train.name}: {len(texts)} messages, {len(set(labels))} intents")
        print(f"stratified split (seed {SEED}): {len(train_x)} training rows, {len(test_x)} hold-out rows")

    encoder = LocalBackend().load()
    (train_v, test_v), direct_seconds = timed(
        lambda: [encoder.encode(part, normalize_embeddings=True, batch_size=64) for part in (train_x, test_x)]
    )
    print(f"direct encode of {len(texts)} messages: {direct_seconds:.1f}s")

    Ticket.objects.all().delete()
    Classifier.objects.all().delete()
    worker = start_worker({"SEMANTIC_BENCH_BACKEND": "local"})
    try:
        started = time.monotonic()
        with suspend_embedding():
            Ticket.objects.bulk_create(Ticket(text=t, category=c) for t, c in zip(train_x, train_y))
            held_out = Ticket.objects.bulk_create(Ticket(text=t) for t in test_x)
        queue_pending(Ticket)
        wait_for(lambda: not Ticket.objects.filter(embedding__isnull=True).exists(), timeout=3600, every=2)
        print(f"embedding {len(texts)} rows through the worker: {time.monotonic() - started:.1f}s")
    finally:
        worker.terminate()
        worker.wait(30)
    truth = {row.pk: label for row, label in zip(held_out, test_y)}

    def accuracy(predicted: dict) -> float:
        return 100 * sum(predicted.get(pk) == label for pk, label in truth.items()) / len(truth)

    # Direct baselines on the same model's vectors.
    lr = LogisticRegression(C=DEFAULT_C, max_iter=MAX_ITER).fit(train_v, train_y)
    direct_lr = 100 * float(np.mean(lr.predict(test_v) == np.array(test_y)))
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(train_v, train_y)
    direct_knn = 100 * float(np.mean(knn.predict(test_v) == np.array(test_y)))
    best_direct = max(direct_lr, direct_knn)
    print(f"direct LogisticRegression accuracy:  {direct_lr:.2f}")
    print(f"direct 5-NN vote accuracy:           {direct_knn:.2f}")

    everything = Ticket.objects.all()
    results = {}
    for k in (5, 10):
        predicted, seconds = timed(lambda k=k: {p.pk: p.label for p in predict_labels(everything, k=k)})
        results[f"ORM k-NN vote, k={k}"] = accuracy(predicted)
        print(f"ORM k-NN vote (k={k}) accuracy:       {accuracy(predicted):.2f}  ({len(truth) / seconds:.0f} rows/s)")
    _, train_seconds = timed(lambda: train_classifier(Ticket, "category"))
    predicted, seconds = timed(lambda: {p.pk: p.label for p in predict_labels(everything, method="linear")})
    results["ORM logistic regression"] = accuracy(predicted)
    print(
        f"ORM logistic regression accuracy:    {accuracy(predicted):.2f}  "
        f"(trained in {train_seconds:.1f}s, {len(truth) / seconds:.0f} rows/s)"
    )
    best_name = max(results, key=results.get)
    verdict = "PASS" if results[best_name] >= best_direct - 0.5 else "FAIL"
    print(f"best ORM ({best_name}) {results[best_name]:.2f} vs best direct {best_direct:.2f}: {verdict} (>= -0.5)")

    test_pks = [row.pk for row in held_out]
    clusters = len(set(test_y))  # as many topics as the hold-out has intents
    topics, orm_seconds = timed(lambda: cluster(Ticket.objects.filter(pk__in=test_pks), k=clusters, seed=SEED))
    group = {pk: topic.number for topic in topics for pk in topic.pks}
    orm_v = 100 * v_measure_score(test_y, [group[pk] for pk in test_pks])
    direct_kmeans, direct_seconds = timed(
        lambda: KMeans(n_clusters=clusters, n_init=KMEANS_INITS, random_state=SEED).fit(test_v)
    )
    direct_v = 100 * v_measure_score(test_y, direct_kmeans.labels_)
    verdict = "PASS" if abs(orm_v - direct_v) <= 0.5 else "FAIL"
    print(f"k-means k={clusters} on the hold-out, V-measure x100: ORM {orm_v:.2f} ({orm_seconds:.1f}s), ", end="")
    print(f"direct {direct_v:.2f} ({direct_seconds:.1f}s): {verdict} (within 0.5)")
    for topic in topics[:5]:
        print(f"  topic {topic.number}: {topic.size} rows, label {topic.label!r}, e.g. {str(topic.typical[0])!r}")

    if args.rows:
        from benchmarks.banking77_scale import throughput

        throughput(args.rows, np.vstack([train_v, test_v]), list(train_y) + list(test_y), linear=args.linear)


if __name__ == "__main__":
    main()
