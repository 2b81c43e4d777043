"""Passage search (``similar_to(passages=True)``) against hand-written SQL.

20,000 documents (``tests.docsapp.Doc``) with 5 passages each: 100,000 passages of
384 dimensions (clustered unit vectors, as the local model's size), written with COPY
into ``semantic.Passage`` in a database of their own, ``semantic_bench_passages``.
Passage search is exact (no HNSW index on the passage table, which holds vectors of
every size), so every variant returns the same rows; the script checks that they do.

For no filter, a filter keeping 10% of the documents (a primary key range) and one
keeping 1% (``corpus_id``, indexed), the median time of
``list(Doc.objects.filter(...).similar_to(vector, passages=True)[:10])`` against
three hand-written queries, through Django's cursor with the vector as text, each
returning what ``similar_to(passages=True)`` returns: the document's columns, the
distance, and the nearest passage's text, offsets and position:

- *per row (LATERAL)*: for each kept document, its nearest passage through the
  passage table's unique index, then the 10 nearest documents: the plan
  ``similar_to(passages=True)`` asks for, without its ``EXISTS`` (the lateral join
  drops documents without passages itself);
- *GROUP BY*: one pass over the field's passages, ``min(distance)`` per document;
- *DISTINCT ON*: the same pass, the nearest passage per document by a sort;
- *GROUP BY, kept rows as an array*: ``min(distance)`` per document over the passages
  of the kept documents only, found through the passage table's unique index.

The first two passage-side forms keep the filter as ``object_pk IN (SELECT id::text
FROM docsapp_doc WHERE ...)`` (a semi-join over every passage of the field); the last
as ``object_pk = ANY(ARRAY(SELECT id::text FROM docsapp_doc WHERE ...))``, the kept
documents' keys computed once, which the unique index takes as an index condition.

    .venv/bin/python -m benchmarks.passage_search
"""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.common import setup

DATABASE = "semantic_bench_passages"
DOCUMENTS = 20_000
PER_DOCUMENT = 5
DIMENSIONS = 384
CLUSTERS = 500
QUERIES = int(os.environ.get("PASSAGE_QUERIES", 40))
WARM_UP = 3
SEED = 3

PASSAGES = "model_label = 'docsapp.Doc' AND field_name = 'embedding' AND spec = %(spec)s"
DISTANCE = "vector <=> %(q)s::vector"
#: min(distance) per document over the passages ``{kept}`` admits, then the 10 nearest.
GROUP_BY = f"""
        WITH nearest AS (
            SELECT object_pk, min({DISTANCE}) AS distance FROM semantic_passage
            WHERE {PASSAGES} {{kept}}
            GROUP BY object_pk ORDER BY 2, object_pk::bigint LIMIT 10
        )
        SELECT {{columns}}, nearest.distance, p.text, p.start, p."end", p.position
        FROM nearest JOIN docsapp_doc d ON d.id = nearest.object_pk::bigint
        CROSS JOIN LATERAL (
            SELECT text, start, "end", position FROM semantic_passage
            WHERE {PASSAGES} AND object_pk = nearest.object_pk ORDER BY {DISTANCE}, position LIMIT 1
        ) p
        ORDER BY nearest.distance, d.id"""
#: The same columns as similar_to(passages=True)'s: the document's (``{columns}``), the
#: distance, and the nearest passage's text, offsets and position.
HAND = {
    "hand, per row (LATERAL)": f"""
        SELECT {{columns}}, p.distance, p.text, p.start, p."end", p.position FROM docsapp_doc d
        CROSS JOIN LATERAL (
            SELECT {DISTANCE} AS distance, text, start, "end", position FROM semantic_passage
            WHERE {PASSAGES} AND object_pk = d.id::text ORDER BY 1, position LIMIT 1
        ) p
        WHERE TRUE {{rows}} ORDER BY p.distance, d.id LIMIT 10""",
    "hand, GROUP BY": GROUP_BY.replace("{kept}", "{passages}"),
    "hand, GROUP BY, kept rows as an array": GROUP_BY,
    "hand, DISTINCT ON": f"""
        SELECT {{columns}}, nearest.distance, nearest.text, nearest.start, nearest."end", nearest.position
        FROM (
            SELECT DISTINCT ON (object_pk) object_pk, {DISTANCE} AS distance, text, start, "end", position
            FROM semantic_passage WHERE {PASSAGES} {{passages}}
            ORDER BY object_pk, distance, position
        ) nearest JOIN docsapp_doc d ON d.id = nearest.object_pk::bigint
        ORDER BY nearest.distance, d.id LIMIT 10""",
}
#: label, ORM filter, the same as SQL on docsapp_doc (alias d).
FILTERS = (
    ("no filter", {}, ""),
    ("10% (pk range)", {"pk__lte": DOCUMENTS // 10}, f"d.id <= {DOCUMENTS // 10}"),
    ("1% (corpus_id)", {"corpus_id": "g7"}, "d.corpus_id = 'g7'"),
)


def load(field) -> None:
    """The documents and their passages, unless already there.

    Each document's own vector is its first passage's, as the worker's would be close to
    it (both read the start of the text): similar_to(passages=True) searches the rows
    that have one, and ranks by it a row whose passages are not stored yet.
    """
    from django.db import connection
    from django.db.models import F, IntegerField, OuterRef, Subquery
    from django.db.models.functions import Cast
    from pgvector import Vector

    from semantic.models import Passage
    from semantic.passage_rows import cut_marker
    from tests.docsapp.models import Doc

    marked = {f"{field.embedded_hash_name}__isnull": False}
    loaded = Doc.objects.filter(pk=1, title=f"document 0 (seed {SEED})", embedding__isnull=False, **marked).exists()
    if loaded and Doc.objects.count() == DOCUMENTS and Passage.objects.count() == DOCUMENTS * PER_DOCUMENT:
        return
    rng = np.random.default_rng(SEED)
    centers = rng.normal(size=(CLUSTERS, DIMENSIONS)).astype(np.float32)
    vectors = np.empty((DOCUMENTS, PER_DOCUMENT, DIMENSIONS), dtype=np.float32)
    for i in range(DOCUMENTS):
        drawn = centers[rng.integers(CLUSTERS, size=PER_DOCUMENT)]
        vectors[i] = drawn + rng.normal(size=drawn.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE docsapp_doc RESTART IDENTITY CASCADE")  # and the tables that refer to it
        cursor.execute("DELETE FROM semantic_passage")
        columns = f"title, text, published, corpus_id, {field.column}, {field.spec_name}"
        with cursor.copy(f"COPY docsapp_doc ({columns}) FROM STDIN") as copy:
            for i in range(DOCUMENTS):
                row = (f"document {i} (seed {SEED})", f"the text of document {i}", True, f"g{i % 100}")
                copy.write_row((*row, Vector(vectors[i, 0]).to_text(), field.spec()))
        columns = 'model_label, field_name, object_pk, position, start, "end", text, text_hash, cut_from, spec, vector'
        with cursor.copy(f"COPY semantic_passage ({columns}) FROM STDIN") as copy:
            for i in range(DOCUMENTS):
                for p, vector in enumerate(vectors[i]):
                    text = f"passage {p} of document {i}"
                    row = ("docsapp.Doc", field.name, str(i + 1), p, p * 100, p * 100 + 99, text, "", "", field.spec())
                    copy.write_row((*row, Vector(vector).to_text()))
        # As the worker leaves them: each row's vector made of its text as stored, and its
        # passages cut from that text (searches use only those, and show only a current row's).
        Doc.objects.update(**{field.embedded_hash_name: field.stored_text_hash()})
        row = Doc.objects.filter(pk=Cast(OuterRef("object_pk"), IntegerField()))
        marker = row.annotate(marker=cut_marker(field, F(field.embedded_hash_name))).values("marker")[:1]
        Passage.objects.filter(model_label="docsapp.Doc", field_name=field.name).update(cut_from=Subquery(marker))
        # Hint bits and the visibility map set now, not by the first timed queries.
        cursor.execute("VACUUM (ANALYZE) docsapp_doc")
        cursor.execute("VACUUM (ANALYZE) semantic_passage")
    print(f"loaded {DOCUMENTS} documents, {DOCUMENTS * PER_DOCUMENT} passages in {time.monotonic() - started:.0f}s")


def make_queries() -> np.ndarray:
    """The query vectors: near the centres of the passages' clusters."""
    rng = np.random.default_rng(SEED + 1)
    centers = np.random.default_rng(SEED).normal(size=(CLUSTERS, DIMENSIONS)).astype(np.float32)
    queries = centers[rng.integers(CLUSTERS, size=QUERIES)] + rng.normal(size=(QUERIES, DIMENSIONS))
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def in_random_order(runs: dict[str, Any], queries: np.ndarray, label: str) -> tuple[dict[str, list[float]], list]:
    """Each query through every variant of ``runs`` (after ``WARM_UP`` untimed), the
    variants in a seeded random order: each variant's times, and each query's answers
    by variant."""
    for q in queries[:WARM_UP]:
        for run in runs.values():
            run(q)
    times: dict[str, list[float]] = {name: [] for name in runs}
    answers = []
    shuffle = random.Random(f"{label} order")
    for q in queries:
        answered = {}
        for name in shuffle.sample(list(runs), len(runs)):
            started = time.perf_counter()
            answered[name] = runs[name](q)
            times[name].append(time.perf_counter() - started)
        answers.append(answered)
    return times, answers


def main() -> None:
    setup(database=DATABASE)
    from django.db import connection

    from semantic.query import vector_literal
    from semantic.registry import get_embedding_field
    from tests.docsapp.models import Doc

    field = get_embedding_field(Doc)
    load(field)
    queries = make_queries()
    load_before = os.getloadavg()

    columns = ", ".join(
        f"d.{connection.ops.quote_name(f.column)}" for f in Doc._meta.concrete_fields if f.attname != field.attname
    )
    width = len(columns.split(", "))

    def orm(q, orm_filter):
        found = Doc.objects.filter(**orm_filter).similar_to(q.tolist(), passages=True)[:10]
        return [(row.pk, round(row.distance, 5), row.passage_position) for row in found]

    def hand(sql, q, condition):
        rows = f"AND {condition}" if condition else ""
        passages = f"AND object_pk IN (SELECT d.id::text FROM docsapp_doc d WHERE {condition})" if condition else ""
        kept = (
            f"AND object_pk = ANY(ARRAY(SELECT d.id::text FROM docsapp_doc d WHERE {condition}))" if condition else ""
        )
        text = sql.format(columns=columns, rows=rows, passages=passages, kept=kept)
        with connection.cursor() as cursor:
            cursor.execute(text, {"q": vector_literal(q), "spec": field.spec()})
            return [(row[0], round(row[width], 5), row[-1]) for row in cursor.fetchall()]

    report = {}
    for label, orm_filter, condition in FILTERS:
        runs = {"similar_to(passages=True)": lambda q, f=orm_filter: orm(q, f)}
        runs.update({name: (lambda q, sql=sql, c=condition: hand(sql, q, c)) for name, sql in HAND.items()})
        times, answers = in_random_order(runs, queries, label)
        differ = {name: 0 for name in runs}
        for answered in answers:
            expected = answered["similar_to(passages=True)"]
            for name, answer in answered.items():
                differ[name] += answer != expected
        report[label] = {name: (statistics.median(t), differ[name]) for name, t in times.items()}
        print(f"done: {label}", flush=True)

    print(
        f"\n{DOCUMENTS} documents x {PER_DOCUMENT} passages ({DIMENSIONS} dimensions), {QUERIES} queries per filter "
        f"(after {WARM_UP} untimed), top 10, median time; load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    for label, rows in report.items():
        print(f"\n{label}")
        for name, (t, differ) in rows.items():
            same = "same 10 rows and distances" if not differ else f"differs for {differ} queries"
            print(f"  {name:38} {t * 1000:9.2f} ms  {same}")
        fastest, name = min((t, name) for name, (t, _) in rows.items() if name.startswith("hand"))
        ratio = rows["similar_to(passages=True)"][0] / fastest
        print(f"  ratio similar_to(passages=True) / fastest hand-written: {ratio:.2f} ({name})")


if __name__ == "__main__":
    main()
