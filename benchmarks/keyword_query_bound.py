"""SciFact's 809 training claims: keyword search alone, with the query before and after its bound.

Before, a query was ``plainto_tsquery``'s words with every ``&`` made ``|``: each occurrence
of each word, repeats included, so a pasted text made a tsquery of thousands of terms.
Now (:class:`semantic.keyword.WordsQuery`) it is the distinct words of the first
``MAX_QUERY_CHARS`` characters, at most ``MAX_QUERY_WORDS``. Each abstract's
``to_tsvector('english', title || ' ' || text)`` is stored once in a temporary
GIN-indexed table, as in ``benchmarks.keyword_ranking``; every claim is searched both
ways and ranked by ``ts_rank(v, q, 1)``. Prints nDCG@10 of each, how many claims' top 10
(ids or scores) differ, and the time of three pastes of about 100,000 characters: a few words
repeated, and abstracts.

    .venv/bin/python -m benchmarks.keyword_query_bound
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import setup

BEFORE = "replace(plainto_tsquery('english', %s)::text, ' & ', ' | ')::tsquery"
#: As keyword_search() writes it: the query once in the filter and once in the rank.
SEARCH = "SELECT corpus_id, ts_rank(v, {query}, 1) FROM kw WHERE v @@ {query} ORDER BY 2 DESC, corpus_id LIMIT 10"
#: Texts pasted into a search box: 15,000 and 17,000 words, each of three or ten words repeated
#: (and, in main(), 100,000 characters of abstracts).
PASTES = ("reset password help " * 5000, "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 1700)


def main() -> None:
    setup()
    from django.db import DatabaseError, connection
    from django.db.models.sql import Query

    from benchmarks.keyword_ranking import claims_and_abstracts, create_keyword_table
    from semantic.evaluate import ndcg
    from semantic.keyword import WordsQuery
    from tests.docsapp.models import Doc

    queries, qrels, judged, documents = claims_and_abstracts()
    compiler = Query(Doc).get_compiler(connection=connection)

    def after(text: str) -> tuple[str, list[object]]:
        return WordsQuery(text, "english").as_sql(compiler, connection)

    def before(text: str) -> tuple[str, list[object]]:
        return BEFORE, [text]

    with connection.cursor() as cursor:
        create_keyword_table(cursor)
        results = {}
        for name, build in (("before", before), ("after", after)):
            ranked, scores, took = {}, [], []
            for qid in judged:
                sql, params = build(queries[qid])
                started = time.monotonic()
                cursor.execute(SEARCH.format(query=sql), params * 2)
                ranked[qid] = cursor.fetchall()
                took.append(time.monotonic() - started)
                scores.append(ndcg([row[0] for row in ranked[qid]], qrels[qid]))
            results[name] = ranked
            print(
                f"{name:<7} nDCG@10 {100 * statistics.mean(scores):6.2f}, "
                f"median {1000 * statistics.median(took):.1f} ms a claim, {sum(took):.1f} s in all"
            )
            prose = " ".join(d["text"] for d in documents[:100])[:100_000]  # many distinct words
            for paste in (*PASTES, prose):
                sql, params = build(paste)
                started = time.monotonic()
                try:
                    cursor.execute(SEARCH.format(query=sql), params * 2)
                    took = f"{time.monotonic() - started:.3f} s"
                except DatabaseError as error:
                    took = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                words = len(paste.split())
                print(f"{name:<7} {len(paste):,}-character paste, {words:,} words of {len(set(paste.split()))}: {took}")
        differ = sum(results["before"][qid] != results["after"][qid] for qid in judged)
        print(f"claims whose top 10 (ids and scores) differ: {differ}")


if __name__ == "__main__":
    main()
