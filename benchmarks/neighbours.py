"""Nearest neighbours at 100,000 x 768 (halfvec, HNSW): similar_to() vs raw SQL.

For each of 200 query vectors: the median time of ``list(similar_to(vector)[:10])``
against the same query written by hand and run through psycopg (the baseline), and
recall@10 against an exact numpy search over the same stored vectors. Then the same
with a filter that keeps 1% of the rows, where raw SQL with pgvector's default
settings is shown for comparison.

    .venv/bin/python -m benchmarks.neighbours
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from benchmarks import vectors as dataset
from benchmarks.common import setup

QUERIES = 200


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def recall(found: list[int], expected: list[int]) -> float:
    return len(set(found) & set(expected)) / len(expected)


def main() -> None:
    setup(BACKEND="semantic.backends.gemini.GeminiBackend")
    from django.db import connection

    from semantic.fields import get_embedding_field
    from tests.testapp.models import Passage

    vectors, groups, _ = dataset.make()
    ids = np.array(dataset.load(vectors, groups))
    field = get_embedding_field(Passage)
    spec = field.spec()
    qs = dataset.queries(QUERIES)
    columns = ", ".join(
        connection.ops.quote_name(f.column) for f in Passage._meta.concrete_fields if f.attname != field.attname
    )
    raw = (
        f"SELECT {columns}, embedding::halfvec(768) <=> %s AS distance FROM testapp_passage "
        "WHERE embedding IS NOT NULL AND embedding_spec = %s AND vector_dims(embedding) = 768 {filter} "
        "ORDER BY distance LIMIT 10"
    )
    cursor = connection.cursor().cursor  # the psycopg cursor itself

    def run_raw(q, group=None):
        text = "[" + ",".join(f"{x:.6f}" for x in q) + "]"
        if group is None:
            cursor.execute(raw.format(filter=""), [text, spec])
        else:
            cursor.execute(raw.format(filter='AND "group" = %s'), [text, spec, group])
        return [row[0] for row in cursor.fetchall()]

    def run_orm(q, group=None):
        base = Passage.objects.all() if group is None else Passage.objects.filter(group=group)
        return [p.pk for p in base.similar_to(list(map(float, q)))[:10]]

    for q in qs[:10]:  # warm the cache and the connection
        run_raw(q)
        run_orm(q)

    report = {}
    for label, group_of in (("unfiltered", lambda i: None), ("1% filter", lambda i: int(i % dataset.GROUPS))):
        raw_times, orm_times, raw_recalls, orm_recalls = [], [], [], []
        exacts = []
        for i, q in enumerate(qs):
            # Computed before any timing: a 100,000 x 768 product between two timed
            # queries would flush the CPU caches the database works from.
            group = group_of(i)
            mask = np.ones(len(ids), bool) if group is None else groups == group
            exacts.append(list(ids[mask][np.argsort(-(vectors[mask] @ q))[:10]]))
        for i, q in enumerate(qs):
            group, exact = group_of(i), exacts[i]
            t_raw, found_raw = timed(lambda q=q, group=group: run_raw(q, group))
            t_orm, found_orm = timed(lambda q=q, group=group: run_orm(q, group))
            raw_times.append(t_raw)
            orm_times.append(t_orm)
            raw_recalls.append(recall(found_raw, exact))
            orm_recalls.append(recall(found_orm, exact))
        report[label] = (
            statistics.median(orm_times),
            statistics.median(raw_times),
            float(np.mean(orm_recalls)),
            float(np.mean(raw_recalls)),
        )
    with connection.cursor() as c:
        c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        version = c.fetchone()[0]
        c.execute("EXPLAIN " + raw.format(filter=""), ["[" + ",".join(["0.01"] * 768) + "]", spec])
        uses_index = any("passage_embedding_hnsw" in row[0] for row in c.fetchall())
    orm_plan = Passage.objects.similar_to(list(map(float, qs[0])))[:10].explain()
    print(
        f"{len(ids)} rows x {dataset.DIMENSIONS} halfvec, pgvector {version}, HNSW m=16 ef_construction=64, "
        f"{QUERIES} queries, top 10; HNSW index in the plan: raw SQL {uses_index}, "
        f"similar_to {'passage_embedding_hnsw' in orm_plan}"
    )
    print(
        f"{'':12} {'similar_to median':>18} {'raw SQL median':>15} {'ratio':>6} {'recall@10':>10} {'raw recall@10':>14}"
    )
    for label, (orm, raw_t, orm_recall, raw_recall) in report.items():
        times = f"{orm * 1000:15.2f} ms {raw_t * 1000:12.2f} ms {orm / raw_t:6.2f}"
        print(f"{label:12} {times} {orm_recall:10.3f} {raw_recall:14.3f}")


if __name__ == "__main__":
    main()
