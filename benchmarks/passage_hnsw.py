"""What an HNSW index on the passage table would give passage search (a measurement for
a design, not a feature: ``similar_to(passages=True)`` does not use such an index).

Passage search is exact today: every passage of the rows the queryset admits is
compared with the query, so an unfiltered search over 100,000 passages compares
100,000 vectors. The passage table holds the vectors of every field with passages, of
any size, so no single HNSW index fits it; a partial expression index per field and
size does: ``USING hnsw ((vector::vector(384)) vector_cosine_ops) WHERE model_label =
... AND field_name = ... AND vector_dims(vector) = 384``.

On ``benchmarks/passage_search.py``'s data (20,000 documents x 5 passages, 384
dimensions, its database), this script builds that index (timed), then for each query
runs ``similar_to(passages=True)`` (exact: the reference answer and the baseline), the
fastest hand-written exact query of that benchmark (per row, LATERAL) and, through the
index, the nearest ``k`` passages (relaxed order, ``ef_search``) grouped into rows,
the 10 nearest rows kept; recall@10 of the rows against the exact answer. Without a
filter, and with one keeping 10% of the documents (``object_pk IN`` the kept rows,
which the iterative scan checks as it goes). The index is dropped at the end.

    .venv/bin/python -m benchmarks.passage_hnsw
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from benchmarks import passage_search as data
from benchmarks.common import setup

INDEX = "bench_passage_hnsw"
#: (passages fetched through the index, hnsw.ef_search)
SETTINGS = ((40, 40), (100, 100), (200, 200), (400, 400))
FILTERS = (("no filter", ""), ("10% (pk range)", f"d.id <= {data.DOCUMENTS // 10}"))
PASSAGES = "model_label = 'docsapp.Doc' AND field_name = %(field)s AND spec = %(spec)s"
EXACT = f"""
    SELECT d.id FROM docsapp_doc d CROSS JOIN LATERAL (
        SELECT vector <=> %(q)s::vector AS distance FROM semantic_passage
        WHERE {PASSAGES} AND object_pk = d.id::text ORDER BY 1, position LIMIT 1
    ) p WHERE TRUE {{rows}} ORDER BY p.distance, d.id LIMIT 10"""
THROUGH_INDEX = f"""
    WITH nearest AS MATERIALIZED (
        SELECT object_pk, vector::vector({data.DIMENSIONS}) <=> %(q)s::vector({data.DIMENSIONS}) AS distance
        FROM semantic_passage
        WHERE {PASSAGES} AND vector_dims(vector) = {data.DIMENSIONS} {{passages}}
        ORDER BY vector::vector({data.DIMENSIONS}) <=> %(q)s::vector({data.DIMENSIONS}) LIMIT %(k)s
    )
    SELECT d.id FROM (SELECT object_pk, min(distance) AS distance FROM nearest GROUP BY object_pk) n
    JOIN docsapp_doc d ON d.id = n.object_pk::bigint ORDER BY n.distance, d.id LIMIT 10"""


def main() -> None:
    setup(database=data.DATABASE)
    from django.db import connection

    from semantic.registry import get_embedding_field
    from semantic.vectors import vector_literal
    from tests.docsapp.models import Doc

    field = get_embedding_field(Doc)
    data.load(field)
    queries = data.make_queries()
    params = {"field": field.name, "spec": field.spec()}
    load_before = os.getloadavg()

    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {INDEX}")
        started = time.perf_counter()
        cursor.execute(
            f"CREATE INDEX {INDEX} ON semantic_passage USING hnsw "
            f"((vector::vector({data.DIMENSIONS})) vector_cosine_ops) "
            f"WHERE model_label = 'docsapp.Doc' AND field_name = %s AND vector_dims(vector) = {data.DIMENSIONS}",
            [field.name],
        )
        built = time.perf_counter() - started
        cursor.execute("ANALYZE semantic_passage")

    def ours(q, kept):
        rows = Doc.objects.filter(pk__lte=data.DOCUMENTS // 10) if kept else Doc.objects.all()
        return [row.pk for row in rows.similar_to(q.tolist(), passages=True)[:10]]

    def hand(sql, q, condition, settings="", k=0):
        rows = f"AND {condition}" if condition else ""
        passages = f"AND object_pk IN (SELECT d.id::text FROM docsapp_doc d WHERE {condition})" if condition else ""
        with connection.cursor() as cursor:
            if settings:
                cursor.execute(settings)
            cursor.execute(sql.format(rows=rows, passages=passages), {**params, "q": vector_literal(q), "k": k})
            found = [row[0] for row in cursor.fetchall()]
            if settings:
                cursor.execute("RESET ALL")
        return found

    report = {}
    try:
        for label, condition in FILTERS:
            runs = {
                "similar_to(passages=True)": lambda q, c=condition: ours(q, bool(c)),
                "hand exact, per row (LATERAL)": lambda q, c=condition: hand(EXACT, q, c),
            }
            for k, ef in SETTINGS:
                settings = f"SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = {ef}"
                runs[f"HNSW, {k} passages, ef_search {ef}"] = lambda q, c=condition, s=settings, k=k: hand(
                    THROUGH_INDEX, q, c, s, k
                )
            times, answers = data.in_random_order(runs, queries, label)
            recalls = {name: [] for name in runs}
            for answered in answers:
                exact = set(answered["similar_to(passages=True)"])
                for name, found in answered.items():
                    recalls[name].append(len(exact & set(found)) / len(exact))
            report[label] = {name: (statistics.median(times[name]), float(np.mean(recalls[name]))) for name in runs}
            print(f"done: {label}", flush=True)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {INDEX}")

    print(
        f"\n{data.DOCUMENTS} documents x {data.PER_DOCUMENT} passages ({data.DIMENSIONS} dimensions), "
        f"HNSW index (m=16, ef_construction=64) built in {built:.1f} s; {data.QUERIES} queries per filter "
        f"(after {data.WARM_UP} untimed), top 10 rows, median time, recall@10 against similar_to(passages=True); "
        f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    for label, rows in report.items():
        exact_time = rows["hand exact, per row (LATERAL)"][0]
        print(f"\n{label}")
        for name, (t, r) in rows.items():
            print(f"  {name:34} {t * 1000:9.2f} ms  recall {r:.3f}  {t / exact_time:6.3f} x the hand exact query")


if __name__ == "__main__":
    main()
