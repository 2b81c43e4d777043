"""What adding an EmbeddingField's bookkeeping column costs on a table that already
holds vectors: the field's ``<name>_source_hash`` and ``<name>_pending`` are stored
generated columns, which PostgreSQL fills by rewriting the table and rebuilding its
indexes. Measured on the neighbours benchmark's table (100,000 x halfvec(768) with an
HNSW index) and on a copy of its rows without the vectors, against adding a plain
nullable column (the baseline: a catalogue change only) in the same run. Every column
is dropped again afterwards.

    .venv/bin/python -m benchmarks.migration
"""

from __future__ import annotations

import time

from benchmarks import vectors as dataset
from benchmarks.common import setup

GENERATED = "ADD COLUMN probe_hash varchar(32) GENERATED ALWAYS AS (md5(text)) STORED"
PLAIN = "ADD COLUMN probe_plain varchar(32) NULL"


def add(cursor, table: str, clause: str) -> tuple[float, bool]:
    """Seconds to run ``ALTER TABLE table clause``, and whether the table was rewritten."""
    cursor.execute("SELECT relfilenode FROM pg_class WHERE oid = %s::regclass", [table])
    before = cursor.fetchone()[0]
    started = time.monotonic()
    cursor.execute(f"ALTER TABLE {table} {clause}")
    seconds = time.monotonic() - started
    cursor.execute("SELECT relfilenode FROM pg_class WHERE oid = %s::regclass", [table])
    return seconds, cursor.fetchone()[0] != before


def main() -> None:
    setup(BACKEND="semantic.backends.gemini.GeminiBackend")
    from django.db import connection

    vectors, groups, _ = dataset.make()
    dataset.load(vectors, groups)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS probe_text_only")
        cursor.execute("CREATE TABLE probe_text_only AS SELECT id, text FROM testapp_passage")
        cursor.execute("ALTER TABLE probe_text_only ADD PRIMARY KEY (id)")
        for table in ("testapp_passage", "probe_text_only"):
            size_sql = "SELECT count(*), pg_size_pretty(pg_total_relation_size(%s::regclass)) FROM "
            cursor.execute(size_sql + table, [table])
            rows, size = cursor.fetchone()
            plain, plain_rewritten = add(cursor, table, PLAIN)
            generated, generated_rewritten = add(cursor, table, GENERATED)
            cursor.execute(f"ALTER TABLE {table} DROP COLUMN probe_plain, DROP COLUMN probe_hash")
            print(
                f"{table}: {rows} rows, {size}; plain nullable column {plain:.3f}s (rewritten: {plain_rewritten}), "
                f"stored generated column {generated:.2f}s (rewritten: {generated_rewritten}), "
                f"{generated / plain:.0f} x the plain column"
            )
        cursor.execute("DROP TABLE probe_text_only")


if __name__ == "__main__":
    main()
