"""Where a short filtered search's time goes: the server's part and the Python around it.

For the two cells of ``benchmarks/neighbours.py`` where ``similar_to()`` misses the 1.2
goal (a filter keeping 1% of the rows, exact; and 50%, iterative scan; the ``group``
column, indexed), each query runs four ways, in a seeded random order:

- **hand**: the fastest hand-written SQL of that cell, through psycopg on a connection
  of its own with the settings set once (the vector's text included, as it must be);
- **leanest ORM**: the same filter, ``defer()``, ``order_by("pk")[:10]``, ten model
  instances, and the vector's text computed and not sent: the least Python any ORM
  search of this shape can cost, whatever it sends;
- **pgvector ORM**: the search with pgvector-python's ``CosineDistance``, its index
  settings set beforehand and not timed;
- **similar_to()**.

Each is timed whole and inside ``cursor.execute`` (a Django execute wrapper; for the
hand query, around ``execute`` and ``fetchall``): the time outside is Python. Medians
over the queries' second pass. The last lines compare what 1.2 times the hand query
allows beyond it with what the leanest ORM query's Python alone costs beyond the hand
query's.

    .venv/bin/python -m benchmarks.search_python
"""

from __future__ import annotations

import os
import random
import statistics
import time

from benchmarks import vectors as dataset
from benchmarks.common import setup

QUERIES = int(os.environ.get("NEIGHBOURS_QUERIES", 100))
CELLS = {
    "1%, indexed": (1, "SET enable_indexscan = off"),
    "50%, indexed": (50, "SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = 100"),
}
VARIANTS = ("hand", "leanest ORM", "pgvector ORM", "similar_to()")


def main() -> None:
    setup(BACKEND="semantic.backends.gemini.GeminiBackend")
    import psycopg
    from django.db import connection
    from django.db.models import Value
    from pgvector.django import CosineDistance

    from semantic.registry import get_embedding_field
    from semantic.vectors import vector_literal
    from tests.testapp.models import Passage

    vectors, groups, _ = dataset.make()
    dataset.load(vectors, groups)
    field = get_embedding_field(Passage)
    spec = field.spec()
    queries = dataset.queries(QUERIES)
    columns = ", ".join(
        connection.ops.quote_name(f.column) for f in Passage._meta.concrete_fields if f.attname != field.attname
    )
    keep = ("dbname", "user", "password", "host", "port", "client_encoding")
    params = {key: value for key, value in connection.get_connection_params().items() if key in keep}
    inside: list[float] = []

    def wrapper(execute, sql, sql_params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, sql_params, many, context)
        finally:
            inside.append(time.perf_counter() - started)

    report = {}
    load_before = os.getloadavg()

    def measure(width: int, settings: str) -> dict[str, tuple[float, float]]:
        own = psycopg.connect(**params, autocommit=True, cursor_factory=psycopg.ClientCursor)
        own.execute(settings)
        cursor = own.cursor()

        def kept(i: int) -> tuple[int, int]:
            start = (i * width) % dataset.GROUPS
            return start, start + width

        def filtered(i: int):
            start, end = kept(i)
            return Passage.objects.filter(group__gte=start, group__lt=end)

        def hand(i, q):
            text = vector_literal(q)
            start, end = kept(i)
            started = time.perf_counter()
            cursor.execute(
                f"SELECT {columns}, embedding::halfvec(768) <=> %s AS distance FROM testapp_passage "
                "WHERE embedding IS NOT NULL AND embedding_spec = %s AND vector_dims(embedding) = 768 "
                'AND "group" >= %s AND "group" < %s ORDER BY distance LIMIT 10',
                [text, spec, start, end],
            )
            found = [row[0] for row in cursor.fetchall()]
            inside.append(time.perf_counter() - started)
            return found

        def leanest(i, q):
            vector_literal(q)
            return [p.pk for p in filtered(i).defer(field.attname).order_by("pk")[:10]]

        def pgvector_orm(i, q):
            distance = CosineDistance(field.indexed_vector(), Value(vector_literal(q)))
            rows = filtered(i).filter(field.searchable()).annotate(distance=distance)
            return [p.pk for p in rows.defer(field.attname).order_by("distance", "pk")[:10]]

        def ours(i, q):
            return [p.pk for p in filtered(i).similar_to(list(map(float, q)))[:10]]

        runs = {"hand": hand, "leanest ORM": leanest, "pgvector ORM": pgvector_orm, "similar_to()": ours}
        totals = {name: [] for name in VARIANTS}
        pythons = {name: [] for name in VARIANTS}
        shuffle = random.Random(f"{width}% order")
        for timed_pass in (False, True):
            for i, q in enumerate(queries):
                for name in shuffle.sample(VARIANTS, len(VARIANTS)):
                    if name == "pgvector ORM":
                        with connection.cursor() as c:
                            c.execute(settings)
                    inside.clear()
                    with connection.execute_wrapper(wrapper):
                        started = time.perf_counter()
                        runs[name](i, q)
                        total = time.perf_counter() - started
                    if name == "pgvector ORM":
                        with connection.cursor() as c:
                            c.execute("RESET ALL")
                    if timed_pass:
                        totals[name].append(total)
                        pythons[name].append(total - sum(inside))
        own.close()
        return {name: (statistics.median(totals[name]), statistics.median(pythons[name])) for name in VARIANTS}

    for label, (width, settings) in CELLS.items():
        report[label] = measure(width, settings)
    load_after = os.getloadavg()

    print(
        f"{QUERIES} queries per cell, median of the second pass; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    for label, rows in report.items():
        hand_total, hand_python = rows["hand"]
        print(f"\n{label}: total, Python outside cursor.execute, Python beyond the hand query's")
        for name, (total, python) in rows.items():
            print(
                f"  {name:14} {total * 1000:7.3f} ms  {python * 1000:6.3f} ms  {(python - hand_python) * 1000:+6.3f} ms"
            )
        lean_extra = rows["leanest ORM"][1] - hand_python
        allowance = 0.2 * hand_total
        print(
            f"  1.2 x the hand query allows {allowance * 1000:.3f} ms beyond it; the leanest ORM query's Python "
            f"alone takes {lean_extra * 1000:.3f} ms beyond the hand query's ({lean_extra / allowance:.0%} of it)"
        )


if __name__ == "__main__":
    main()
