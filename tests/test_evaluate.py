"""semantic.evaluate's measures, and semantic_evaluate on a tiny hand-made corpus.

The fake Gemini server embeds here: the meaning figures are not asserted (its vectors
count shared words), the keyword figures are, since full-text search decides them.
"""

import json
import math
import re

import pytest
from django.core.cache import cache
from django.core.management.base import CommandError

from semantic import embed_pending
from semantic.evaluate import METHODS, NOTHING_TO_EVALUATE, load_qrels, mrr, ndcg, recall
from semantic.management.commands.semantic_evaluate import Command
from semantic.vectors import SearchUnavailable
from tests.commands import call, manage
from tests.docsapp.models import Doc
from tests.fake_gemini import api_error


def test_ndcg_discounts_by_position_and_grades_by_score():
    assert ndcg(["a", "b", "c"], {"b": 1}) == pytest.approx(1 / math.log2(3))
    assert ndcg(["b", "a"], {"a": 2, "b": 1}) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert ndcg(["x"] * 10 + ["a"], {"a": 1}) == 0.0
    assert ndcg(["bad", "good"], {"bad": -1, "good": 1}) == pytest.approx(1 / math.log2(3))  # a negative costs nothing


def test_recall_and_mrr_count_only_positive_judgements():
    assert recall(["a", "z"], {"a": 1, "b": 1, "c": 0}) == 0.5
    assert mrr(["x", "c", "a"], {"a": 2, "c": 0}) == pytest.approx(1 / 3)
    assert mrr(["x"] * 10 + ["a"], {"a": 1}) == 0.0


@pytest.fixture
def files(tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "\n".join(
            json.dumps(q)
            for q in [
                {"_id": "q1", "text": "coffee and caffeine"},
                {"_id": "q2", "text": "the sleep quality"},
                {"_id": "q3", "text": "judged not relevant only"},
            ]
        )
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t0\nq4\td1\t1\n")
    return queries, qrels


#: Four short abstracts: (corpus id, title, text).
DOCS = [
    ("d1", "Coffee", "Caffeine in coffee keeps people awake."),
    ("d2", "Rest", "Adults who rest eight hours feel the better."),
    ("d3", "Insomnia", "Poor sleep follows late meals."),
    ("d4", "Tea", "Green tea is popular in Japan."),
]


def create_docs():
    for corpus_id, title, text in DOCS:
        Doc.objects.create(corpus_id=corpus_id, title=title, text=text)


@pytest.mark.django_db(transaction=True)
def test_the_command_prints_each_method_through_the_orm(files):
    create_docs()
    embed_pending()
    queries, qrels = files
    out, _ = call(
        "semantic_evaluate", "docsapp.Doc", "--queries", str(queries), "--qrels", str(qrels), "--id-field", "corpus_id"
    )
    assert Command.SUMMARY.format(queries=3, rows=4, label="docsapp.Doc") in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[0] in METHODS}
    assert set(lines) == {"meaning", "keyword", "hybrid", "passages", "hybrid-passages"}  # Doc's field has passages
    # Each short abstract is one passage holding the row's own vector: the same ranking. The
    # relevant rows share a word with their query ("the" for q2, which full-text search drops),
    # so none is tied with an unrelated row at distance 1, whose order similar_to() leaves open.
    assert lines["passages"][:3] == lines["meaning"][:3]
    assert lines["hybrid-passages"][:3] == lines["hybrid"][:3]
    # q1 finds d1 first by keyword; q2's words are only in d3, which is not relevant; q3 has
    # no relevant document and scores 0.
    assert lines["keyword"][:3] == ["33.33", "33.33", "33.33"]


@pytest.mark.django_db
def test_the_means_are_pytrec_evals_over_every_judged_query_with_a_text(tmp_path):
    """BEIR's averaging of pytrec_eval, worked by hand on keyword rankings (each query's
    words are in one row only, so each ranking is that row alone)."""
    create_docs()
    queries = tmp_path / "queries.jsonl"
    texts = {"q0": "coffee", "q2": "sleep", "q6": "adults rest", "q9": "tea", "unjudged": "coffee"}
    queries.write_text("\n".join(json.dumps({"_id": qid, "text": text}) for qid, text in texts.items()))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n"
        "q0\td1\t1\n"  # found first: 1, 1, 1
        "q2\td3\t0\n"  # judged, nothing relevant: 0, 0, 0 (and counted)
        "q99\td1\t1\n"  # no text: never searched, left out
        "q6\td2\t1\nq6\tgone\t1\n"  # d2 first, the other relevant one is not in the table
        "q9\td4\t2\nq9\td1\t1\n"  # the grade-2 row first, the grade-1 one not found
    )
    out, _ = call(
        "semantic_evaluate",
        "docsapp.Doc",
        *("--queries", str(queries), "--qrels", str(qrels), "--id-field", "corpus_id", "--methods", "keyword"),
    )
    second = 1 / math.log2(3)
    ndcg10 = (1 + 0 + 1 / (1 + second) + 2 / (2 + second)) / 4
    recall100 = (1 + 0 + 0.5 + 0.5) / 4
    mrr10 = (1 + 0 + 1 + 1) / 4
    assert out.splitlines()[:3] == [
        Command.SUMMARY.format(queries=4, rows=4, label="docsapp.Doc"),
        Command.WITHOUT_RELEVANT.format(count=1),
        Command.WITHOUT_TEXT.format(count=1),
    ]
    keyword = next(line.split()[1:4] for line in out.splitlines() if line.startswith("keyword"))
    assert keyword == [f"{100 * ndcg10:.2f}", f"{100 * recall100:.2f}", f"{100 * mrr10:.2f}"]


@pytest.mark.django_db
def test_json_output_carries_the_same_figures_and_counts_for_scripts(tmp_path):
    """--format json: what a CI script checks a threshold against, the text table's figures unrounded."""
    create_docs()
    queries = tmp_path / "queries.jsonl"
    texts = {"q0": "coffee", "q2": "sleep", "q9": "tea"}
    queries.write_text("\n".join(json.dumps({"_id": qid, "text": text}) for qid, text in texts.items()))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\nq2\td3\t0\nq99\td1\t1\nq9\td4\t2\nq9\td1\t1\n")
    arguments = ("--queries", str(queries), "--qrels", str(qrels), "--id-field", "corpus_id", "--methods", "keyword")
    text, _ = call("semantic_evaluate", "docsapp.Doc", *arguments)
    out, _ = call("semantic_evaluate", "docsapp.Doc", *arguments, "--format", "json")
    report = json.loads(out)
    assert {key: report[key] for key in ("model", "field", "rows", "averaged", "without_relevant", "without_text")} == {
        "model": "docsapp.Doc",
        "field": "embedding",
        "rows": 4,
        "averaged": 3,
        "without_relevant": 1,
        "without_text": 1,
    }
    assert list(report["methods"]) == ["keyword"]
    figures = report["methods"]["keyword"]
    ndcg10 = (1 + 0 + 2 / (2 + 1 / math.log2(3))) / 3
    assert figures["ndcg@10"] == pytest.approx(ndcg10)
    assert (figures["recall@100"], figures["mrr@10"], figures["queries"]) == (pytest.approx(1.5 / 3), 2 / 3, 3)
    row = next(line.split()[1:4] for line in text.splitlines() if line.startswith("keyword"))
    assert row == [f"{100 * figures[name]:.2f}" for name in ("ndcg@10", "recall@100", "mrr@10")]


@pytest.mark.django_db
def test_judgements_with_nothing_relevant_are_a_clear_error(files, tmp_path):
    queries, _ = files
    qrels = tmp_path / "zeros.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq3\td3\t0\nq4\td1\t1\n")
    with pytest.raises(CommandError, match=re.escape(NOTHING_TO_EVALUATE)):
        call("semantic_evaluate", "docsapp.Doc", "--queries", str(queries), "--qrels", str(qrels))


@pytest.mark.django_db(transaction=True)
def test_a_model_without_a_keyword_index_is_evaluated_by_meaning_saying_what_was_skipped(tmp_path):
    """The README's command as printed, on its own Note (no KeywordIndex)."""
    from tests.testapp.models import Note

    first = Note.objects.create(text="Change your password in the settings.")
    Note.objects.create(text="The train to Paris is late.")
    queries, qrels = tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"
    queries.write_text(json.dumps({"_id": "q1", "text": "reset my password"}))
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq1\t{first.pk}\t1\n")
    args = ("semantic_evaluate", "testapp.Note", "--queries", str(queries), "--qrels", str(qrels))
    out, err = call(*args)
    assert Command.SKIPPED.format(label="testapp.Note", methods="keyword and hybrid") in err
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["meaning"]
    with pytest.raises(CommandError) as info:
        call(*args, "--methods", "meaning,hybrid")
    assert str(info.value) == Command.NO_KEYWORD_INDEX.format(label="testapp.Note", methods="hybrid", others="meaning")


@pytest.mark.django_db
def test_bad_files_and_fields_are_named(files, tmp_path):
    queries, _ = files
    headless = tmp_path / "headless.tsv"
    headless.write_text("q1\td1\t1\n")
    with pytest.raises(CommandError, match="header"):
        call("semantic_evaluate", "docsapp.Doc", "--queries", str(queries), "--qrels", str(headless))
    with pytest.raises(CommandError, match=Command.NO_ID_FIELD.format(label="docsapp.Doc", name="nope")):
        call(
            "semantic_evaluate",
            "docsapp.Doc",
            "--queries",
            str(queries),
            "--qrels",
            str(headless),
            "--id-field",
            "nope",
        )
    with pytest.raises(ValueError, match="header"):
        load_qrels(headless)


@pytest.mark.django_db(transaction=True)
def test_the_api_failing_is_one_line_and_exit_status_1(files, fake_gemini):
    """As semantic_search says it: no traceback through evaluate, query and vectors."""
    Doc.objects.create(corpus_id="d1", title="Coffee", text="Caffeine in coffee keeps people awake.")
    cache.clear()  # no query vector from another test
    fake_gemini.fail_every(500, body=api_error(500, "Internal error encountered.", "INTERNAL"))
    queries, qrels = files
    args = ["semantic_evaluate", "docsapp.Doc", "--queries", str(queries), "--qrels", str(qrels)]
    with pytest.raises(CommandError) as info:
        call(*args)
    reason = "Gemini API error 500: Internal error encountered."
    assert str(info.value) == Command.UNAVAILABLE.format(error=SearchUnavailable.FAILED.format(reason=reason))

    process = manage(fake_gemini, *args[:2], "--queries", str(queries), "--qrels", str(qrels))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert err.splitlines() == ["CommandError: " + str(info.value)]
