"""SciFact's 809 training claims: keyword search alone, by PostgreSQL ranking function.

Each abstract's ``to_tsvector('english', title || ' ' || text)`` is stored once in a
temporary GIN-indexed table; every claim matches with its words OR-ed (what
``semantic.keyword`` does) and the matches are ranked by each function below. Prints
nDCG@10 and the seconds the 809 claims took. The abstracts are stored as
``docsapp.Doc`` rows (no vectors needed) when the table does not hold them already.

    .venv/bin/python -m benchmarks.keyword_ranking
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import setup

RANKINGS = {
    "ts_rank_cd": "ts_rank_cd(v, q)",
    "ts_rank_cd, normalisation 1": "ts_rank_cd(v, q, 1)",
    "ts_rank_cd, normalisation 2": "ts_rank_cd(v, q, 2)",
    "ts_rank": "ts_rank(v, q)",
    "ts_rank, normalisation 1": "ts_rank(v, q, 1)",
    "ts_rank, normalisation 2": "ts_rank(v, q, 2)",
    "ts_rank, normalisation 8": "ts_rank(v, q, 8)",
    "ts_rank, normalisation 16": "ts_rank(v, q, 16)",
}


def claims_and_abstracts() -> tuple[dict, dict, list, list]:
    """SciFact's training claims, their judgements, the judged claims' ids and the abstracts,
    the abstracts stored as ``docsapp.Doc`` rows (no vectors) unless the table holds them already."""
    from benchmarks.scifact import QRELS, QUERIES, corpus
    from semantic import suspend_embedding
    from semantic.evaluate import load_qrels, load_queries
    from tests.docsapp.models import Doc

    queries, qrels = load_queries(QUERIES), load_qrels(QRELS)
    judged = [q for q in queries if q in qrels]
    documents = corpus()
    if Doc.objects.count() != len(documents):
        Doc.objects.all().delete()
        with suspend_embedding():
            Doc.objects.bulk_create(Doc(corpus_id=d["_id"], title=d["title"], text=d["text"]) for d in documents)
    print(f"{Doc.objects.count()} abstracts, {len(judged)} claims")
    return queries, qrels, judged, documents


def create_keyword_table(cursor) -> None:
    """The temporary table ``kw``: each abstract's words, once, GIN-indexed."""
    from tests.docsapp.models import Doc

    cursor.execute(
        "CREATE TEMP TABLE kw AS SELECT corpus_id, "
        f"to_tsvector('english', coalesce(title, '') || ' ' || coalesce(text, '')) v FROM {Doc._meta.db_table}"
    )
    cursor.execute("CREATE INDEX ON kw USING gin (v)")


def main() -> None:
    setup()
    from django.db import connection

    from semantic.evaluate import ndcg

    queries, qrels, judged, _ = claims_and_abstracts()
    with connection.cursor() as cursor:
        create_keyword_table(cursor)
        for name, rank in RANKINGS.items():
            scores = []
            started = time.monotonic()
            for qid in judged:
                cursor.execute(
                    "SELECT corpus_id FROM (SELECT corpus_id, v, "
                    "replace(plainto_tsquery('english', %s)::text, ' & ', ' | ')::tsquery q FROM kw) s "
                    f"WHERE v @@ q ORDER BY {rank} DESC, corpus_id LIMIT 10",
                    [queries[qid]],
                )
                scores.append(ndcg([row[0] for row in cursor.fetchall()], qrels[qid]))
            print(f"{name:<30} nDCG@10 {100 * statistics.mean(scores):6.2f}  {time.monotonic() - started:6.1f} s")


if __name__ == "__main__":
    main()
