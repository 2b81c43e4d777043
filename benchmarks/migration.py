"""What adding an EmbeddingField costs on a big table that already holds vectors.

The case that matters is the second field of a model switch (``replaces=``): the table
has 100,000 rows of ``halfvec(768)`` and an HNSW index. The migration is what
``makemigrations`` writes for it: AddField for the vector and its three companion
columns, the index on ``<name>_spec``, and the partial index of pending rows. It is
applied with Django's schema editor, timed, checked for a table rewrite
(``relfilenode``), and rolled back. The baseline, in the same run, is adding one plain
nullable column (a catalogue change only).

``--with-generated`` also times the design this replaced (a stored generated column
hashing the text), which rewrites the table and its indexes: 132 s on 2026-11-26.

    .venv/bin/python -m benchmarks.migration [--with-generated]
"""

from __future__ import annotations

import argparse
import time

from benchmarks import vectors as dataset
from benchmarks.common import setup

PLAIN = "ADD COLUMN probe_plain varchar(32) NULL"
GENERATED = "ADD COLUMN probe_hash varchar(32) GENERATED ALWAYS AS (md5(text)) STORED"


def relfilenode(cursor, table: str) -> int:
    cursor.execute("SELECT relfilenode FROM pg_class WHERE oid = %s::regclass", [table])
    return cursor.fetchone()[0]


def alter(cursor, table: str, clause: str) -> tuple[float, bool]:
    """Seconds to run ``ALTER TABLE table clause``, and whether the table was rewritten."""
    before = relfilenode(cursor, table)
    started = time.monotonic()
    cursor.execute(f"ALTER TABLE {table} {clause}")
    return time.monotonic() - started, relfilenode(cursor, table) != before


def add_replacing_field() -> tuple[float, bool, list[str]]:
    """The replacing field's migration, applied and rolled back; (seconds, rewritten, statements)."""
    from django.db import connection, transaction

    from semantic.fields import EmbeddingField
    from semantic.registry import get_embedding_field
    from tests.testapp.models import Passage

    field = EmbeddingField(source="text", dimensions=256, replaces="embedding")
    Passage.add_to_class("embedding_probe", field)
    new_fields = [f for f in Passage._meta.local_fields if f.name.startswith("embedding_probe")]
    pending = field.pending_index(Passage)
    assert get_embedding_field(Passage, "embedding_probe") is field
    with connection.cursor() as cursor:
        before = relfilenode(cursor, Passage._meta.db_table)
    statements: list[str] = []
    try:
        with transaction.atomic():
            started = time.monotonic()
            with connection.schema_editor(atomic=False, collect_sql=False) as editor:
                for new_field in new_fields:
                    editor.add_field(Passage, new_field)
                editor.add_index(Passage, pending)
                statements = [str(s) for s in editor.deferred_sql]
            seconds = time.monotonic() - started
            with connection.cursor() as cursor:
                rewritten = relfilenode(cursor, Passage._meta.db_table) != before
            transaction.set_rollback(True)
    finally:
        Passage._meta.local_fields[:] = [f for f in Passage._meta.local_fields if f not in new_fields]
        Passage._meta._expire_cache()
    return seconds, rewritten, statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--with-generated", action="store_true", help="also time a stored generated column (slow)")
    args = parser.parse_args()
    setup(BACKEND="semantic.backends.gemini.GeminiBackend")
    from django.db import connection

    vectors, groups, _ = dataset.make()
    dataset.load(vectors, groups)
    table = "testapp_passage"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), pg_size_pretty(pg_total_relation_size('{table}')) FROM {table}")
        rows, size = cursor.fetchone()
        cursor.execute(f"SELECT indexdef FROM pg_indexes WHERE tablename = '{table}' AND indexdef LIKE '%hnsw%'")
        print(f"{table}: {rows} rows, {size}; {cursor.fetchone()[0]}")
        plain, plain_rewritten = alter(cursor, table, PLAIN)
        cursor.execute(f"ALTER TABLE {table} DROP COLUMN probe_plain")
    print(f"plain nullable column (baseline): {plain:.3f} s, rewritten: {plain_rewritten}")
    seconds, rewritten, _ = add_replacing_field()
    print(
        f"replacing EmbeddingField (4 columns, spec index, pending index): {seconds:.3f} s, rewritten: {rewritten}, "
        f"{seconds / plain:.0f} x the plain column"
    )
    if args.with_generated:
        with connection.cursor() as cursor:
            generated, generated_rewritten = alter(cursor, table, GENERATED)
            cursor.execute(f"ALTER TABLE {table} DROP COLUMN probe_hash")
        print(f"stored generated column (the old design): {generated:.2f} s, rewritten: {generated_rewritten}")


if __name__ == "__main__":
    main()
