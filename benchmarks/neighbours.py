"""Nearest neighbours at 100,000 x 768 (halfvec, HNSW): similar_to() vs hand-written SQL.

Unfiltered: the median time of ``list(similar_to(vector)[:10])`` against the same query
written by hand and run through psycopg, and recall@10 against an exact numpy search
over the same stored vectors.

Filtered: for filters keeping 1%, 10% and 50% of the rows, on the indexed ``group``
column and on the unindexed ``bucket`` column (same values), each query is run these
ways: ``similar_to()``; by hand exactly (same WHERE, ordered by distance + 0, which no
index serves, and again ordered by the distance column on a connection with index
scans off, which is how similar_to() makes a search exact); by hand through HNSW with
``hnsw.iterative_scan = relaxed_order`` and ``ef_search`` 100 (what similar_to() uses
for a broad filter, sorting the fetched rows); by hand with pgvector's default
settings; and by hand with strict order and ``ef_search`` 200 (what a broad
``values_list()`` search uses, having no distance to sort by). The hand-written
queries run on connections of their own whose settings were set once, so they pay no
settings round trip, and all but the first order by the ``distance`` column, so the
vector is sent and parsed once. The ratio compares similar_to() with the fastest
hand-written query whose recall is at least similar_to()'s.

Two more rows explain the ratio and are not peers in it. "Replayed" sends the exact
message similar_to() sent for each query again, as text through psycopg: the
server's part of its time. "pgvector ORM" is the same search written with
pgvector-python's ``CosineDistance`` in the ORM (same WHERE, same columns, model
instances), the index settings set beforehand and not timed: what any ORM query of
this shape costs, with nothing of ours in it.

The variants of each query run in a random order (seeded): in a fixed rotation each
one always followed the same other, and a query that follows a 20 ms graph scan
finds the CPU caches cold (the table and index are larger than shared_buffers).

    .venv/bin/python -m benchmarks.neighbours
"""

from __future__ import annotations

import os
import random
import statistics
import time

import numpy as np

from benchmarks import vectors as dataset
from benchmarks.common import setup

QUERIES = int(os.environ.get("NEIGHBOURS_QUERIES", 100))
#: similar_to()'s own SQL message sent again as text: the server's part of its time, not a peer in the ratio.
REPLAYED = "similar_to()'s SQL, replayed"
#: The same search in the ORM with pgvector-python alone: the ORM's own cost, not a peer in the ratio.
PLAIN_ORM = "pgvector ORM, same SQL, settings set before"
NOT_PEERS = ("similar_to()", REPLAYED, PLAIN_ORM)
WARM_UP = 5
SELECTIVITIES = (1, 10, 50)  # groups kept out of dataset.GROUPS (100): percent of the rows
COLUMNS = (("indexed", "group"), ("unindexed", "bucket"))
HAND = {
    "hand exact SQL": ("", "(embedding::halfvec(768) <=> %s) + 0"),
    "hand exact SQL, index scans off": ("SET enable_indexscan = off", "distance"),
    "hand HNSW relaxed_order, ef_search 100": (
        "SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = 100",
        "distance",
    ),
    "hand SQL, pgvector defaults": ("", "distance"),
    "hand HNSW strict_order, ef_search 200": (
        "SET hnsw.iterative_scan = strict_order; SET hnsw.ef_search = 200; SET hnsw.max_scan_tuples = 200000",
        "distance",
    ),
}
#: What similar_to() chose for each filtered cell (its "took" line), set before each pgvector ORM query.
CHOSEN_SETTINGS = {
    "exact": "SET enable_indexscan = off",
    "HNSW iterative": "SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = 100; "
    "SET hnsw.max_scan_tuples = 200000",
    "HNSW": "",
}


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def recall(found: list[int], expected: list[int]) -> float:
    return len(set(found) & set(expected)) / len(expected)


def kept(i: int, width: int) -> tuple[int, int]:
    """The groups [start, start + width) query ``i`` keeps."""
    start = (i * width) % dataset.GROUPS
    return start, start + width


def main() -> None:
    setup(BACKEND="semantic.backends.gemini.GeminiBackend")
    import psycopg
    from django.db import connection
    from django.db.models import Value
    from django.db.models.expressions import RawSQL
    from django.test.utils import CaptureQueriesContext
    from pgvector.django import CosineDistance

    from semantic.query import vector_literal
    from semantic.registry import get_embedding_field
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
        "ORDER BY {order} LIMIT 10"
    )
    keep = ("dbname", "user", "password", "host", "port", "client_encoding")
    params = {key: value for key, value in connection.get_connection_params().items() if key in keep}
    hand = {}
    for label, (settings, order) in HAND.items():
        own = psycopg.connect(**params, autocommit=True, cursor_factory=psycopg.ClientCursor)
        if settings:
            own.execute(settings)
        hand[label] = (own.cursor(), order)
    load_before = os.getloadavg()

    def where(column: str, i: int, width: int) -> tuple[str, list[int]]:
        start, end = kept(i, width)
        if width == 1:
            return f'AND "{column}" = %s', [start]
        return f'AND "{column}" >= %s AND "{column}" < %s', [start, end]

    def run_hand(label, q, column=None, i=0, width=0):
        cursor, order = hand[label]
        text = vector_literal(q)
        condition, values = where(column, i, width) if column else ("", [])
        again = [text] if "%s" in order else []
        cursor.execute(raw.format(filter=condition, order=order), [text, spec, *values, *again])
        return [row[0] for row in cursor.fetchall()]

    def searched(column=None, i=0, width=0):
        if column is None:
            return Passage.objects.all()
        start, end = kept(i, width)
        if width == 1:
            return Passage.objects.filter(**{column: start})
        return Passage.objects.filter(**{f"{column}__gte": start, f"{column}__lt": end})

    def run_orm(q, column=None, i=0, width=0):
        return [p.pk for p in searched(column, i, width).similar_to(list(map(float, q)))[:10]]

    def run_plain_orm(q, column=None, i=0, width=0):
        """pgvector-python's own ORM search, the same SQL as similar_to()'s."""
        distance = CosineDistance(field.indexed_vector(), Value(vector_literal(q)))
        rows = searched(column, i, width).filter(field.searchable()).annotate(distance=distance)
        return [p.pk for p in rows.defer(field.attname).order_by("distance", "pk")[:10]]

    def timed_plain_orm(q, column, i, width, settings):
        """Its time, without setting and resetting the settings on Django's connection."""
        if settings:
            with connection.cursor() as cursor:
                cursor.execute(settings)
        try:
            return timed(lambda: run_plain_orm(q, column, i, width))
        finally:
            if settings:
                with connection.cursor() as cursor:
                    cursor.execute("RESET ALL")

    replay = psycopg.connect(**params, autocommit=True).cursor()
    sent: dict[tuple[str, int], str] = {}

    def run_replay(label, i):
        """The message similar_to() sent for this query, as text through psycopg: its server time."""
        replay.execute(sent[label, i])
        rows: list = []
        while True:
            if replay.description:
                rows = replay.fetchall()
            if not replay.nextset():
                return [row[0] for row in rows]

    def path(column, width):
        """What the server chose for similar_to(): no index scan (exact), or the iterative scan."""
        seen = RawSQL("current_setting('enable_indexscan')", [])
        rows = searched(column, 0, width).similar_to(list(map(float, qs[0])))[:1].annotate(seen=seen)
        return "exact" if rows[0].seen == "off" else "HNSW iterative"

    variants = ["similar_to()", *HAND]
    # The exact answers are computed before any timing: a 100,000 x 768 product between
    # two timed queries would flush the CPU caches the database works from.
    cells = [("unfiltered", None, 0)] + [
        (f"{width}% {kind}", column, width) for width in SELECTIVITIES for kind, column in COLUMNS
    ]
    exacts = {}
    for label, _, width in cells:
        for i, q in enumerate(qs):
            start, end = kept(i, width)
            mask = np.ones(len(ids), bool) if not width else (groups >= start) & (groups < end)
            exacts[label, i] = list(ids[mask][np.argsort(-(vectors[mask] @ q))[:10]])

    report = {}
    for label, column, width in cells:
        for i, q in enumerate(qs):
            with CaptureQueriesContext(connection) as captured:
                run_orm(q, column, i, width)
            (sent[label, i],) = [query["sql"] for query in captured.captured_queries]
        chosen = path(column, width) if column else "HNSW"
        names = ["similar_to()", "hand SQL, pgvector defaults"] if column is None else variants
        runs = {
            name: (lambda q, i, column=column, width=width: run_orm(q, column, i, width))
            if name == "similar_to()"
            else (lambda q, i, name=name, column=column, width=width: run_hand(name, q, column, i, width))
            for name in names
        }
        runs[REPLAYED] = lambda q, i, label=label: run_replay(label, i)
        settings = CHOSEN_SETTINGS[chosen]
        runs[PLAIN_ORM] = lambda q, i, column=column, width=width, settings=settings: timed_plain_orm(
            q, column, i, width, settings
        )
        names = [*names, REPLAYED, PLAIN_ORM]
        times = {name: [] for name in names}
        recalls = {name: [] for name in names}
        for i, q in enumerate(qs[:WARM_UP]):
            for run in runs.values():
                run(q, i)
        shuffle = random.Random(f"{label} order")
        for i, q in enumerate(qs):
            order = shuffle.sample(names, len(names))  # no variant always follows the same other
            for name in order:
                if name == PLAIN_ORM:
                    elapsed, found = runs[name](q, i)
                else:
                    elapsed, found = timed(lambda run=runs[name], q=q, i=i: run(q, i))
                times[name].append(elapsed)
                recalls[name].append(recall(found, exacts[label, i]))
        report[label] = (
            {name: (statistics.median(times[name]), float(np.mean(recalls[name]))) for name in names},
            chosen,
        )
        print(f"done: {label}", flush=True)
    load_after = os.getloadavg()

    with connection.cursor() as c:
        c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        version = c.fetchone()[0]
    print(
        f"\n{len(ids)} rows x {dataset.DIMENSIONS} halfvec, pgvector {version}, HNSW m=16 ef_construction=64, "
        f"{QUERIES} queries per cell (after {WARM_UP} untimed), top 10, median time, recall@10 against exact numpy; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    for label, (rows, chosen) in report.items():
        orm_time, orm_recall = rows["similar_to()"]
        peers = [(t, name) for name, (t, r) in rows.items() if name not in NOT_PEERS and r >= orm_recall]
        print(f"\n{label} (similar_to() took: {chosen})")
        for name, (t, r) in rows.items():
            print(f"  {name:42} {t * 1000:9.2f} ms  recall {r:.3f}")
        if peers:
            fastest, name = min(peers)
            print(
                f"  ratio similar_to() / fastest hand-written with recall >= {orm_recall:.3f}: "
                f"{orm_time / fastest:.2f} ({name})"
            )
        else:
            print(f"  no hand-written query reached recall {orm_recall:.3f}")
        print(f"  ratio similar_to() / the pgvector ORM query: {orm_time / rows[PLAIN_ORM][0]:.2f}")


if __name__ == "__main__":
    main()
