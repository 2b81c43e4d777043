"""Finding the rows that need embedding in a big table where few do.

The worker's search for work (``pending_rows()``, the SQL the field's partial index on
``md5(<text>) IS DISTINCT FROM <name>_embedded_hash`` serves) against a baseline in
the same run: a plain boolean column with a partial index on it, the fastest a
bookkeeping column could make it. Measured on the neighbours benchmark's table
(100,000 rows) with 5 rows pending, then with the predicate the planner cannot match
to an index (the same condition spelled without the index), to show what the index buys.

    .venv/bin/python -m benchmarks.pending
"""

from __future__ import annotations

import statistics
import time

from benchmarks import vectors as dataset
from benchmarks.common import setup

PENDING = 5
RUNS = 200


def median_ms(run) -> float:
    for _ in range(10):
        run()
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    setup(BACKEND="semantic.backends.gemini.GeminiBackend")
    from django.db import connection

    from semantic.embedder import pending_rows
    from semantic.registry import get_embedding_field
    from tests.testapp.models import Passage

    vectors, groups, _ = dataset.make()
    dataset.load(vectors, groups)
    field = get_embedding_field(Passage)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE testapp_passage SET embedding_embedded_hash = md5(text) WHERE id <= %s", [PENDING])
        cursor.execute(
            "UPDATE testapp_passage SET embedding_embedded_hash = NULL WHERE id IN "
            "(SELECT id FROM testapp_passage ORDER BY id DESC LIMIT %s)",
            [PENDING],
        )
        cursor.execute("ALTER TABLE testapp_passage ADD COLUMN IF NOT EXISTS probe_pending boolean")
        cursor.execute("UPDATE testapp_passage SET probe_pending = (embedding_embedded_hash IS NULL)")
        cursor.execute("CREATE INDEX IF NOT EXISTS probe_pending_idx ON testapp_passage (id) WHERE probe_pending")
        cursor.execute("VACUUM ANALYZE testapp_passage")
    try:
        rows = pending_rows(Passage, field).defer(field.attname).order_by("pk")[:100]
        found = [p.pk for p in rows]
        assert len(found) == PENDING, found
        orm = median_ms(lambda: list(rows.values_list("pk", flat=True)))
        plan = rows.explain()
        with connection.cursor() as cursor:

            def column():
                cursor.execute("SELECT id FROM testapp_passage WHERE probe_pending ORDER BY id LIMIT 100")
                return cursor.fetchall()

            assert len(column()) == PENDING
            baseline = median_ms(column)

            def unindexed():
                cursor.execute(
                    "SELECT id FROM testapp_passage WHERE md5(text) IS DISTINCT FROM "
                    "coalesce(embedding_embedded_hash, '') ORDER BY id LIMIT 100"
                )
                return cursor.fetchall()

            slow = median_ms(unindexed)
        used = field.pending_index(Passage).name in plan
        print(f"{Passage.objects.count()} rows, {PENDING} pending; pending index used: {used}")
        print(f"plain boolean column + partial index (baseline): {baseline:.2f} ms")
        print(f"pending_rows() over the expression's partial index: {orm:.2f} ms ({orm / baseline:.2f} x)")
        print(f"the same condition with no index to serve it: {slow:.1f} ms ({slow / baseline:.0f} x)")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX IF EXISTS probe_pending_idx")
            cursor.execute("ALTER TABLE testapp_passage DROP COLUMN IF EXISTS probe_pending")
            cursor.execute("UPDATE testapp_passage SET embedding_embedded_hash = md5(text)")


if __name__ == "__main__":
    main()
