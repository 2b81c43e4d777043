"""The server-side function that chooses between an exact search and the HNSW index
for a filtered ``similar_to()`` (see :mod:`semantic.search_plan`).

A DO block did the same in every search, and PostgreSQL compiles a DO block, and
plans each of its expressions, every time it runs: about 0.1 ms of a 1-2 ms search
(docs/benchmarks.md). A function's compiled form and plans last as long as the
connection. The SQL is written out here, not imported, so this migration does
the same thing whatever the code becomes; a later change is a new migration.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION semantic_choose_scan(
    probe text, max_rows double precision, few text[], many text[]
) RETURNS void LANGUAGE plpgsql VOLATILE AS $semantic$
DECLARE
    estimate json;
    chosen text[];
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || probe INTO estimate;
    IF (estimate -> 0 -> 'Plan' ->> 'Plan Rows')::double precision <= max_rows THEN
        chosen := few;
    ELSE
        chosen := many;
    END IF;
    FOR i IN 1 .. coalesce(array_length(chosen, 1), 0) / 2 LOOP
        PERFORM set_config(chosen[2 * i - 1], chosen[2 * i], true);
    END LOOP;
END
$semantic$;
COMMENT ON FUNCTION semantic_choose_scan(text, double precision, text[], text[]) IS
    'django-semantic: sets few (name, value, name, value ...) for the rest of the transaction when the planner '
    'estimates that the query probe returns at most max_rows rows, else many.';
"""

DROP = "DROP FUNCTION IF EXISTS semantic_choose_scan(text, double precision, text[], text[]);"


class Migration(migrations.Migration):
    dependencies = [
        ("semantic", "0008_passage"),
    ]

    operations = [
        migrations.RunSQL(CREATE, DROP, elidable=False),
    ]
