"""SciFact (BEIR) training claims: meaning, keyword and hybrid search through the ORM,
against all-MiniLM-L6-v2 called directly.

The 5,183 abstracts of ../shared/data/scifact are stored as ``tests.docsapp.Doc`` rows
(title, text) and embedded by a real django-q2 worker with the local backend; the
ORM figures come from ``semantic_evaluate`` on the 809 training claims. The direct
baseline encodes each abstract as ``title + " " + text`` with sentence-transformers
and ranks by exact cosine similarity in numpy (the MTEB/BEIR protocol). Then hybrid's
``k`` and weights are compared on the same claims, hybrid's latency against
``similar_to()`` alone, and the fusion in three statements (what ``hybrid()`` runs)
against one statement joining two ranked subqueries: over the abstracts, then over
100,000 ``docsapp.Excerpt`` rows (pieces of the abstracts, their vectors encoded in
this process and written by COPY). ``Doc``'s field has ``passages=True``, so the same
run scores rows ranked by their nearest passage ("passages").

    .venv/bin/python -m benchmarks.scifact [--reload] [--no-tune] [--latency]

The training claims are the default; ``--queries``, ``--qrels`` and ``--corpus`` take
other files in the same layout (BEIR's: a claim per JSON line, ``query-id<TAB>corpus-id
<TAB>score`` with a header), such as the evaluation split:

    .venv/bin/python -m benchmarks.scifact --no-tune \
        --queries ../shared/data/scifact/queries-test.jsonl --qrels ../shared/data/scifact/qrels-test.tsv
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BASE_DIR, setup, start_worker, wait_for

DATA = BASE_DIR.parent / "shared" / "data" / "scifact"
CORPUS = DATA / "corpus.jsonl.gz"
QUERIES = DATA / "queries-train.jsonl"
QRELS = DATA / "qrels-train.tsv"
#: (k, (keyword weight, meaning weight)) compared on the training claims.
WEIGHTS = ((1.0, 1.0), (0.5, 1.0), (0.7, 1.0), (1.0, 0.7), (0.3, 1.0))
GRID = [(k, weights) for k in (3, 5, 10, 30, 60, 100) for weights in WEIGHTS]
LATENCY_QUERIES = 200
#: Rows of ``docsapp.Excerpt`` for hybrid's latency at scale: pieces of the abstracts.
SCALE_ROWS = 100_000


def corpus(path: Path = CORPUS) -> list[dict[str, str]]:
    """The documents of a BEIR corpus file (``.jsonl`` or gzipped ``.jsonl.gz``)."""
    opened = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")
    with opened as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_rows(documents: list[dict[str, str]], reload: bool) -> tuple[int, int, float]:
    """Store the abstracts (kept from an earlier run of the same corpus unless ``reload``) and have a real
    worker cluster (two processes) embed the rows, and their passages, not embedded yet; how many rows and
    passages it embedded, and the seconds taken."""
    from semantic.backfill import hand_to_workers
    from semantic.models import Passage
    from semantic.passage_rows import lagging_rows
    from tests.docsapp.models import Doc

    field = Doc._meta.get_field("embedding")
    if reload or set(Doc.objects.values_list("corpus_id", flat=True)) != {d["_id"] for d in documents}:
        Doc.objects.all().delete()
        Doc.objects.bulk_create(Doc(corpus_id=d["_id"], title=d["title"], text=d["text"]) for d in documents)
    missing = Doc.objects.filter(embedding__isnull=True).count()
    passages_before = Passage.objects.count()
    if not missing and not lagging_rows(Doc, field).exists():
        return 0, 0, 0.0
    worker = start_worker({"SEMANTIC_BENCH_BACKEND": "local"})
    try:
        started = time.monotonic()
        hand_to_workers(Doc, field)  # what `semantic_embed --queue` does: chunks both workers share
        wait_for(
            lambda: not Doc.objects.filter(embedding__isnull=True).exists() and not lagging_rows(Doc, field).exists(),
            timeout=7200,
            every=2,
        )
        return missing, Passage.objects.count() - passages_before, time.monotonic() - started
    finally:
        worker.terminate()
        worker.wait(30)


def excerpts(documents: list[dict[str, str]]) -> list[str]:
    """``SCALE_ROWS`` distinct texts: pieces of the abstracts cut by
    ``semantic.passages.split`` at sentence, then word boundaries, at most 200
    characters, then at most 300 with 120 overlapping (99,624 distinct pieces together),
    then the titles."""
    from semantic.passages import split

    pieces = dict.fromkeys(
        piece.text
        for size, overlap in ((200, 0), (300, 120))
        for document in documents
        for piece in split(document["text"], max_chars=size, overlap=overlap)
    )
    pieces.update(dict.fromkeys(document["title"] for document in documents if document["title"].strip()))
    return list(pieces)[:SCALE_ROWS]


def load_excerpts(documents: list[dict[str, str]]) -> None:
    """Store the excerpts not stored yet, with vectors from the local model called in
    this process, written by COPY with their hash and spec so they count as embedded
    (into an empty table, the indexes are built after the COPY)."""
    import hashlib

    from django.db import connection
    from pgvector import Vector

    from semantic.backends.local import LocalBackend
    from semantic.registry import get_embedding_field
    from tests.docsapp.models import Excerpt

    texts = excerpts(documents)
    field = get_embedding_field(Excerpt)
    stored = set(Excerpt.objects.filter(field.is_current()).values_list("text", flat=True))
    if Excerpt.objects.count() != len(stored) or not stored <= set(texts):
        stored = set()  # rows from elsewhere, or not embedded: start again
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE docsapp_excerpt RESTART IDENTITY")
    missing = [text for text in texts if text not in stored]
    if not missing:
        return
    started = time.monotonic()
    vectors = LocalBackend().load().encode(missing, normalize_embeddings=True, batch_size=64)
    indexes = Excerpt._meta.indexes if not stored else []
    with connection.schema_editor() as editor:
        for index in indexes:
            editor.remove_index(Excerpt, index)
    with connection.cursor() as cursor:
        columns = "text, embedding, embedding_embedded_hash, embedding_spec"
        with cursor.copy(f"COPY docsapp_excerpt ({columns}) FROM STDIN") as copy:
            for text, vector in zip(missing, vectors):
                digest = hashlib.md5(text.encode()).hexdigest()
                copy.write_row((text, Vector(vector).to_text(), digest, field.spec()))
        cursor.execute("SET maintenance_work_mem = '1GB'")
    with connection.schema_editor() as editor:
        for index in indexes:
            editor.add_index(Excerpt, index)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE docsapp_excerpt")
    print(f"stored {len(missing)} excerpts with vectors (encoded in this process) in {time.monotonic() - started:.0f}s")


def latency(queryset, texts: list[str]) -> None:
    """Median latency of similar_to(), hybrid() and the one-statement fusion, 10 rows."""
    from semantic.hybrid import hybrid

    similar = median_ms(lambda t: list(queryset.similar_to(t)[:10]), texts)
    fused = median_ms(lambda t: list(hybrid(queryset, t)[:10]), texts)
    single = median_ms(lambda t: one_statement(queryset, t), texts)
    same = sum([r.pk for r in hybrid(queryset, t)[:10]] == [r.pk for r in one_statement(queryset, t)] for t in texts)
    print(f"median latency over {len(texts)} claims, {queryset.count()} rows, 10 results, query vectors cached:")
    print(f"  similar_to():                                      {similar:.1f} ms")
    print(f"  hybrid() (three statements: two sides, then rows)  {fused:.1f} ms  ({fused / similar:.1f}x)")
    print(f"  one statement (two ranked subqueries, FULL JOIN)   {single:.1f} ms  ({single / similar:.1f}x)")
    print(f"  same top 10 from both fusions: {same}/{len(texts)} claims")


def direct_ndcg(documents: list[dict[str, str]], queries: dict[str, str], judgements: dict) -> float:
    """nDCG@10 of the model called directly: exact cosine search in numpy."""
    from semantic.backends.local import LocalBackend
    from semantic.evaluate import ndcg

    model = LocalBackend(runtime="sentence-transformers").load()
    vectors = model.encode([f"{d['title']} {d['text']}" for d in documents], normalize_embeddings=True, batch_size=32)
    ids = [d["_id"] for d in documents]
    judged = [q for q in judgements if q in queries]
    claims = model.encode([queries[q] for q in judged], normalize_embeddings=True, batch_size=64)
    total = 0.0
    for qid, claim in zip(judged, claims):
        top = np.argsort(-(vectors @ claim))[:10]
        total += ndcg([ids[i] for i in top], judgements[qid])
    return 100 * total / len(judged)


def one_statement(queryset, text: str, limit: int = 10) -> list:
    """The fusion as one SQL statement: two ranked subqueries joined by FULL OUTER JOIN."""
    from django.db import connection, transaction

    from semantic.hybrid import hybrid

    search = hybrid(queryset, text).query.annotations["score"].search
    keyword, meaning = search.sides(queryset)
    keyword_sql, keyword_params = keyword.query.sql_with_params()
    meaning_sql, meaning_params = meaning.query.sql_with_params()
    table = queryset.model._meta.db_table
    sql = f"""
        WITH k AS (SELECT s.pk AS id, row_number() OVER () AS r FROM ({keyword_sql}) s),
             m AS (SELECT s.pk AS id, row_number() OVER () AS r FROM ({meaning_sql}) s),
             fused AS (
                SELECT coalesce(k.id, m.id) AS fused_id,
                       coalesce(%s / (%s + k.r), 0) + coalesce(%s / (%s + m.r), 0) AS score,
                       k.r AS keyword_rank, m.r AS meaning_rank
                FROM k FULL OUTER JOIN m ON k.id = m.id)
        SELECT d.*, fused.score, fused.keyword_rank, fused.meaning_rank
        FROM {table} d JOIN fused ON fused.fused_id = d.id
        ORDER BY fused.score DESC, d.id LIMIT %s
    """
    params = [*keyword_params, *meaning_params, search.weights[0], search.k, search.weights[1], search.k, limit]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = 100")
        return list(queryset.model.objects.raw(sql, params))


def side_lists(queryset, queries: dict[str, str], judged: list[str], side: int) -> dict[str, list]:
    """Each claim's keyword (side 0) or meaning (side 1) candidates, as hybrid() fetches them."""
    from semantic.hybrid import hybrid

    lists = {}
    for qid in judged:
        search = hybrid(queryset, queries[qid]).query.annotations["score"].search
        found = search.sides(queryset)[side]
        lists[qid] = [row["pk"] for row in found] if side else list(found)
    return lists


def quick(claims: int, queries: dict[str, str], judgements: dict) -> None:
    """While the corpus is still being embedded: the embedded rows as the corpus, the
    claims whose relevant abstracts are all among them, no direct baseline. Compares each
    side with hybrid and checks stored vectors against the model called directly."""
    from semantic.backends.local import LocalBackend
    from semantic.evaluate import evaluate
    from tests.docsapp.models import Doc

    queryset = Doc.objects.filter(embedding__isnull=False)
    present = set(queryset.values_list("corpus_id", flat=True))
    chosen = {q: rel for q, rel in judgements.items() if q in queries and set(rel) <= present}
    chosen = dict(list(chosen.items())[:claims])
    print(f"quick: {len(present)} embedded abstracts as the corpus, {len(chosen)} claims judged within them")
    sample = list(queryset.order_by("pk")[:50])
    vectors = LocalBackend().load().encode([f"{d.title} {d.text}" for d in sample], normalize_embeddings=True)
    agreement = [float(np.dot(v, np.array(d.embedding))) for v, d in zip(vectors, sample)]
    print(f"stored vs direct vectors, 50 rows: cosine min {min(agreement):.6f}")
    for method, row in evaluate(queryset, queries, chosen, id_field="corpus_id", methods=["meaning"]).items():
        print(
            f"  {method} via similar_to(): nDCG@10 {100 * row['ndcg@10']:.2f}, "
            f"median {1000 * row['median_seconds']:.1f} ms"
        )
    tune(queryset, queries, chosen)


def tune(queryset, queries: dict[str, str], judgements) -> None:
    """nDCG@10 for each k and weights: both sides searched once, fused by hybrid's own Fused.

    hybrid() orders rows by exactly these scores, so this is what it returns, without
    searching each side again for every setting (the keyword side takes most of the time).
    """
    from semantic.evaluate import scores
    from semantic.hybrid import Fused

    judged = [q for q in judgements if q in queries]
    keyword, meaning = (side_lists(queryset, queries, judged, side) for side in (0, 1))
    corpus_ids = dict(queryset.values_list("pk", "corpus_id"))
    print(f"{'':<32}nDCG@10 / recall@100 / MRR@10")
    for name, weights in (("keyword side alone", (1.0, 0.0)), ("meaning side alone", (0.0, 1.0))):
        totals = dict.fromkeys(("ndcg@10", "recall@100", "mrr@10"), 0.0)
        for qid in judged:
            rows = Fused(keyword[qid], meaning[qid], k=60, weights=weights).rows
            ranked = sorted(rows, key=lambda pk: (-rows[pk]["score"], pk))
            for measure, value in scores([corpus_ids[pk] for pk in ranked], judgements[qid]).items():
                totals[measure] += value
        print(f"  {name:<30}" + " / ".join(f"{100 * totals[m] / len(judged):.2f}" for m in totals))
    print("hybrid by k and (keyword, meaning) weights:")
    for k, weights in GRID:
        totals = dict.fromkeys(("ndcg@10", "recall@100", "mrr@10"), 0.0)
        for qid in judged:
            rows = Fused(keyword[qid], meaning[qid], k=k, weights=weights).rows
            ranked = sorted(rows, key=lambda pk: (-rows[pk]["score"], pk))
            for name, value in scores([corpus_ids[pk] for pk in ranked], judgements[qid]).items():
                totals[name] += value
        figures = " / ".join(f"{100 * totals[name] / len(judged):.2f}" for name in totals)
        print(f"  k={k:<4} weights={weights}: {figures}")


def median_ms(function, texts: list[str]) -> float:
    times = []
    for text in texts:
        started = time.perf_counter()
        function(text)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reload", action="store_true", help="store and embed the corpus again")
    parser.add_argument("--no-tune", action="store_true", help="skip the k and weights comparison")
    parser.add_argument("--quick", type=int, metavar="CLAIMS", help="only the rows embedded so far (see quick())")
    parser.add_argument("--latency", action="store_true", help="only the latencies (the corpus must be embedded)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="BEIR corpus.jsonl(.gz) (default: %(default)s)")
    parser.add_argument("--queries", type=Path, default=QUERIES, help="BEIR queries.jsonl (default: %(default)s)")
    parser.add_argument("--qrels", type=Path, default=QRELS, help="BEIR qrels .tsv (default: %(default)s)")
    arguments = parser.parse_args()
    setup()
    from semantic.evaluate import load_qrels, load_queries, report_lines

    # Read before anything is stored, so that a wrong path or layout stops the run at once.
    queries, judgements = load_queries(arguments.queries), load_qrels(arguments.qrels)
    claims = [queries[q] for q in judgements if q in queries]
    print(f"{arguments.queries}: {len(queries)} queries, {len(claims)} of them judged in {arguments.qrels}")
    if arguments.quick:
        quick(arguments.quick, queries, judgements)
        return
    from django.core.management import call_command

    from tests.docsapp.models import Doc

    documents = corpus(arguments.corpus)
    if arguments.latency:
        measure_latency(documents, claims[:LATENCY_QUERIES])
        return
    # The direct baseline encodes in this process while the worker embeds the rows.
    direct: list[float] = []
    baseline = threading.Thread(target=lambda: direct.append(direct_ndcg(documents, queries, judgements)))
    baseline.start()
    embedded, passages, seconds = load_rows(documents, arguments.reload)
    print(
        f"{arguments.corpus.name}: {len(documents)} documents; the worker embedded {embedded} rows "
        f"and {passages} passages in {seconds:.0f}s"
    )
    baseline.join()
    print(f"direct (sentence-transformers, exact cosine in numpy): nDCG@10 {direct[0]:.2f}")

    names = f"--queries {arguments.queries.name} --qrels {arguments.qrels.name}"
    print(f"semantic_evaluate docsapp.Doc {names} --id-field corpus_id --format json:")
    output = io.StringIO()
    call_command(
        "semantic_evaluate",
        "docsapp.Doc",
        queries=str(arguments.queries),
        qrels=str(arguments.qrels),
        id_field="corpus_id",
        format="json",
        stdout=output,
    )
    report = json.loads(output.getvalue())
    print(f"{report['averaged']} judged queries averaged, {report['rows']} rows")
    for line in report_lines(report["methods"]):
        print(f"  {line}")
    verdicts(direct[0], {method: 100 * row["ndcg@10"] for method, row in report["methods"].items()})

    queryset = Doc.objects.all()
    if not arguments.no_tune:
        tune(queryset, queries, judgements)

    measure_latency(documents, claims[:LATENCY_QUERIES])


def verdicts(direct: float, ndcg: dict[str, float]) -> None:
    """Issue 14's three nDCG@10 targets, each with its margin."""
    meaning = ndcg["meaning"] - direct
    passages = ndcg["passages"] - direct
    hybrid = ndcg["hybrid"] - max(ndcg["meaning"], ndcg["keyword"])
    for name, margin, met in (
        ("meaning through the ORM within 0.5 of direct", meaning, abs(meaning) <= 0.5),
        ("passages at least 1 above direct", passages, passages >= 1.0),
        ("hybrid at least 2 above the better of its parts", hybrid, hybrid >= 2.0),
    ):
        print(f"  {name}: {margin:+.2f} {'met' if met else 'NOT MET'}")


def measure_latency(documents: list[dict[str, str]], texts: list[str]) -> None:
    """Latencies over the abstracts, then over ``SCALE_ROWS`` excerpts."""
    from semantic.vectors import embed
    from tests.docsapp.models import Doc, Excerpt

    embed(texts, task_type="RETRIEVAL_QUERY", dimensions=384)  # query vectors cached for every method alike
    latency(Doc.objects.all(), texts)
    load_excerpts(documents)
    latency(Excerpt.objects.all(), texts)


if __name__ == "__main__":
    main()
