"""Suggesting labels for real Banking77 messages from the ones people labelled."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from django.core.cache import cache
from django.core.management import CommandError
from django.db import connection, models

from semantic import embed_pending, suspend_embedding
from semantic.classify import annotate_predictions, apply_predictions, predict_labels, suggest_label
from semantic.labels import Prediction
from semantic.linear import train_classifier
from semantic.models import Classifier
from tests.commands import call, manage, running_qcluster
from tests.fake_gemini import api_error, fake_vector
from tests.test_worker import wait_for
from tests.topicapp.banking77 import INTENTS, sentences
from tests.topicapp.models import CATEGORIES, Ticket

LOCAL = "semantic.backends.local.LocalBackend"
LABELLED_PER_INTENT = 10


@pytest.fixture
def tickets(semantic_settings):
    """Ten labelled and five unlabelled messages per intent, embedded by the local model.

    Returns the true label of each unlabelled ticket by primary key.
    """
    semantic_settings(BACKEND=LOCAL)
    truth = {}
    with suspend_embedding():
        for intent, texts in sentences().items():
            for number, text in enumerate(texts):
                labelled = number < LABELLED_PER_INTENT
                ticket = Ticket.objects.create(text=text, category=intent if labelled else "")
                if not labelled:
                    truth[ticket.pk] = intent
    embed_pending(Ticket)
    assert not Ticket.objects.filter(embedding__isnull=True).exists()
    return truth


def accuracy(predictions, truth):
    return sum(truth[p.pk] == p.label for p in predictions) / len(truth)


@pytest.mark.django_db(transaction=True)
def test_nearest_neighbours_label_held_out_messages(tickets):
    predictions = list(predict_labels(Ticket.objects.all(), "category", k=5))
    assert sorted(p.pk for p in predictions) == sorted(tickets)
    assert accuracy(predictions, tickets) >= 0.9
    assert all(0 < p.confidence <= 1 for p in predictions)
    # Unanimous neighbours give full confidence.
    assert any(p.confidence == pytest.approx(1.0) for p in predictions)


@pytest.mark.django_db(transaction=True)
def test_the_linear_model_is_trained_stored_and_retrained(tickets):
    predictions = list(predict_labels(Ticket.objects.all(), "category", method="linear"))
    assert accuracy(predictions, tickets) >= 0.9
    stored = Classifier.objects.get(model_label="topicapp.Ticket", field_name="embedding", label_field="category")
    assert sorted(stored.classes) == sorted(INTENTS)
    assert stored.rows == LABELLED_PER_INTENT * len(INTENTS)

    Ticket.objects.filter(pk__in=list(tickets)).update(category="card_arrival")
    retrained = train_classifier(Ticket, "category")
    assert retrained.pk == stored.pk
    assert retrained.rows == Ticket.objects.count()


@pytest.mark.django_db(transaction=True)
def test_predictions_annotate_a_queryset_and_filter_by_confidence(tickets):
    bulk = {p.pk: p for p in predict_labels(Ticket.objects.all(), k=5)}
    annotated = annotate_predictions(Ticket.objects.filter(category=""), k=5).order_by("pk")
    rows = list(annotated.values_list("pk", "predicted_label", "confidence"))
    assert [pk for pk, _, _ in rows] == sorted(bulk)
    for pk, label, confidence in rows:
        assert label == bulk[pk].label
        assert confidence == pytest.approx(bulk[pk].confidence)
    doubtful = annotated.filter(confidence__lt=0.99).values_list("pk", flat=True)
    assert set(doubtful) == {pk for pk, p in bulk.items() if p.confidence < 0.99}


@pytest.mark.django_db(transaction=True)
def test_the_neighbours_come_from_the_hnsw_index(tickets):
    annotated = annotate_predictions(Ticket.objects.filter(category=""), k=5)
    with connection.cursor() as cursor:
        # Tiny tables are cheaper to sort than to search: make the planner show its hand.
        cursor.execute("SET enable_seqscan = off; SET enable_sort = off; SET enable_bitmapscan = off")
        sql, params = annotated.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan; RESET enable_sort; RESET enable_bitmapscan")
    assert "ticket_embedding_hnsw" in plan


@pytest.mark.django_db(transaction=True)
def test_zero_shot_before_anyone_labels(tickets):
    Ticket.objects.update(category="")
    truth = dict(Ticket.objects.values_list("pk", "text"))
    by_text = {text: intent for intent, texts in sentences().items() for text in texts}
    predictions = list(predict_labels(Ticket.objects.all()))
    assert len(predictions) == len(truth)
    correct = sum(by_text[truth[p.pk]] == p.label for p in predictions)
    assert correct / len(predictions) >= 0.6


@pytest.mark.django_db(transaction=True)
def test_a_text_not_saved_gets_the_vote_its_row_would_get(tickets):
    """suggest_label() (a form's text, before saving) agrees with predict_labels() on the saved row."""
    bulk = {p.pk: p for p in predict_labels(Ticket.objects.all(), k=5)}
    sample = Ticket.objects.filter(pk__in=sorted(bulk)[:40]).order_by("pk")
    for pk, text in sample.values_list("pk", "text"):
        suggestion = suggest_label(Ticket.objects.all(), text, k=5)
        assert suggestion.pk is None
        assert (suggestion.label, suggestion.confidence) == (bulk[pk].label, pytest.approx(bulk[pk].confidence))

    Ticket.objects.update(category="")
    zero_shot = {p.pk: p for p in predict_labels(Ticket.objects.filter(pk__in=sorted(bulk)[:10]))}
    for pk, text in sample.values_list("pk", "text")[:10]:
        suggestion = suggest_label(Ticket.objects.all(), text)
        expected = zero_shot[pk]
        assert (suggestion.label, suggestion.confidence) == (expected.label, pytest.approx(expected.confidence))


@pytest.mark.django_db(transaction=True)
def test_apply_writes_only_confident_labels_and_keeps_new_human_ones(tickets):
    predictions = list(predict_labels(Ticket.objects.all(), k=5))
    confident = {p.pk for p in predictions if p.confidence >= 0.99}
    assert 0 < len(confident) < len(predictions)
    someone = next(iter(confident))
    Ticket.objects.filter(pk=someone).update(category="terminate_account")

    written = apply_predictions(iter(predictions), Ticket, "category", min_confidence=0.99)

    assert written == len(confident) - 1
    assert Ticket.objects.get(pk=someone).category == "terminate_account"
    assert (
        set(Ticket.objects.filter(pk__in=list(tickets)).exclude(category="").values_list("pk", flat=True)) == confident
    )


@pytest.mark.django_db(transaction=True)
def test_a_min_confidence_of_one_writes_the_unanimous_labels(tickets):
    """k neighbours that all agree give a confidence of exactly 1.0: "only unanimous votes"."""
    predictions = list(predict_labels(Ticket.objects.all(), k=5))
    unanimous = {p.pk for p in predictions if p.confidence == 1.0}
    assert 0 < len(unanimous) < len(predictions)

    assert apply_predictions(iter(predictions), Ticket, "category", min_confidence=1.0) == len(unanimous)
    assert (
        set(Ticket.objects.filter(pk__in=list(tickets)).exclude(category="").values_list("pk", flat=True)) == unanimous
    )


@pytest.mark.django_db(transaction=True)
def test_command_dry_run_changes_nothing(tickets):
    from semantic.management.commands.semantic_classify import Command

    out, _ = call("semantic_classify", "topicapp.Ticket", "--label", "category", "--k", "5", "--dry-run")
    assert Command.WOULD_APPLY.format(applied=len(tickets), rows=len(tickets), confidence=0.0) in out
    assert Ticket.objects.filter(category="").count() == len(tickets)


@pytest.mark.django_db(transaction=True)
def test_command_applies_labels_above_the_confidence(tickets):
    from semantic.management.commands.semantic_classify import Command

    expected = [p for p in predict_labels(Ticket.objects.all(), k=5) if p.confidence >= 0.8]
    out, _ = call("semantic_classify", "topicapp.Ticket", "--label", "category", "--k", "5", "--min-confidence", "0.8")
    assert Command.APPLIED.format(applied=len(expected), rows=len(tickets), confidence=0.8) in out
    for p in expected:
        assert Ticket.objects.get(pk=p.pk).category == p.label


@pytest.mark.django_db(transaction=True)
def test_command_trains_the_linear_model(tickets):
    from semantic.management.commands.semantic_classify import Command

    linear = ("semantic_classify", "topicapp.Ticket", "--label", "category", "--method", "linear", "--train")
    trained = {"rows": LABELLED_PER_INTENT * len(INTENTS), "labels": len(INTENTS)}
    out, _ = call(*linear, "--dry-run")
    assert Command.TRAINED_DRY.format(**trained) in out
    assert Command.WOULD_APPLY.format(applied=len(tickets), rows=len(tickets), confidence=0.0) in out
    assert not Classifier.objects.exists()  # a dry run writes nothing, the classifier it predicted with included
    assert Ticket.objects.filter(category="").count() == len(tickets)

    out, _ = call(*linear)
    assert Command.TRAINED.format(**trained) in out
    assert Classifier.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_command_says_in_one_line_when_the_api_fails(fake_gemini):
    """Nothing labelled yet: labelling is zero-shot, which embeds the choices' names first."""
    from semantic.management.commands.semantic_classify import Command

    Ticket.objects.create(text="my card never arrived")  # embedded by the fake API as it is saved
    cache.clear()
    fake_gemini.fail_every(500, body=api_error(500, "Internal error encountered.", "INTERNAL"))
    prefix = Command.UNAVAILABLE.format(label="topicapp.Ticket", error="")
    with pytest.raises(CommandError) as info:
        call("semantic_classify", "topicapp.Ticket", "--label", "category")
    assert str(info.value).startswith(prefix) and "Gemini API error 500" in str(info.value)
    assert Ticket.objects.get().category == ""
    process = manage(fake_gemini, "semantic_classify", "topicapp.Ticket", "--label", "category", "--dry-run")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert out == "" and err.startswith("CommandError: " + prefix) and err.count("\n") == 1, err


@pytest.mark.django_db(transaction=True)
def test_command_at_verbosity_zero_prints_nothing(fake_gemini):
    Ticket.objects.create(text="my card never arrived")
    assert call("semantic_classify", "topicapp.Ticket", "--label", "category", "-v", "0") == ("", "")
    assert Ticket.objects.get().category in dict(CATEGORIES)  # zero-shot, from the choices' names
    assert call("semantic_classify", "topicapp.Ticket", "--label", "category", "-v", "0") == ("", "")  # nothing left


@pytest.mark.django_db(transaction=True)
def test_bad_input_is_refused_clearly(tickets):
    with pytest.raises(ValueError, match="no field 'kind'"):
        list(predict_labels(Ticket.objects.all(), "kind"))
    with pytest.raises(ValueError, match="method must be one of"):
        list(predict_labels(Ticket.objects.all(), method="svm"))
    with pytest.raises(ValueError, match="k must be an integer"):
        list(predict_labels(Ticket.objects.all(), k=0))


@pytest.fixture
def local_qcluster(fake_gemini, tmp_path):
    """A real django-q2 worker process embedding with the local model."""
    with running_qcluster(fake_gemini, tmp_path / "qcluster.log", env={"SEMANTIC_TEST_BACKEND": LOCAL}) as process:
        yield process


@pytest.mark.django_db(transaction=True)
def test_rows_embedded_by_a_real_worker_are_labelled_and_grouped(local_qcluster, semantic_settings):
    from semantic.clusters import cluster

    semantic_settings(BACKEND=LOCAL, SYNC=False)
    truth = {}
    for intent, texts in sentences(per_intent=12).items():
        for number, text in enumerate(texts):
            ticket = Ticket.objects.create(text=text, category=intent if number < 8 else "")
            truth[ticket.pk] = intent
    # save() queued the work: nothing is embedded in this process.
    assert Ticket.objects.filter(embedding__isnull=True).count() == len(truth)

    assert wait_for(lambda: not Ticket.objects.filter(embedding__isnull=True).exists(), timeout=180)
    assert local_qcluster.poll() is None

    predictions = list(predict_labels(Ticket.objects.all(), k=5))
    assert len(predictions) == 4 * len(INTENTS)
    assert sum(truth[p.pk] == p.label for p in predictions) / len(predictions) >= 0.9
    topics = cluster(Ticket.objects.all(), k=len(INTENTS))
    assert all(Counter(truth[pk] for pk in t.pks).most_common(1)[0][1] >= 0.8 * t.size for t in topics)


def unit(*parts):
    """A 384-dimensional vector with the given leading components, made unit length."""
    vector = np.zeros(384)
    vector[: len(parts)] = parts
    return (vector / np.linalg.norm(vector)).tolist()


@pytest.mark.django_db
def test_the_vote_is_weighted_by_similarity_and_its_share_is_the_confidence():
    """Three 'a' neighbours at similarity 0.8 outvote two nearer 'b' ones at 0.9: 2.4 to 1.8."""
    spec = Ticket._meta.get_field("embedding").spec()
    rows = [
        ("", unit(1)),
        ("a", unit(0.8, 0.6)),
        ("a", unit(0.8, 0, 0.6)),
        ("a", unit(0.8, 0, 0, 0.6)),
        ("b", unit(0.9, 0, 0, 0, 0.19**0.5)),
        ("b", unit(0.9, 0, 0, 0, 0, 0.19**0.5)),
        ("c", unit(0, 0, 0, 0, 0, 0, 1)),
    ]
    with suspend_embedding():
        for category, vector in rows:
            Ticket.objects.create(text=f"ticket {category}", category=category, embedding=vector, embedding_spec=spec)
    (prediction,) = predict_labels(Ticket.objects.all(), k=5)
    assert prediction.label == "a"
    assert prediction.confidence == pytest.approx(2.4 / 4.2, abs=1e-4)
    (prediction,) = predict_labels(Ticket.objects.all(), k=2)
    assert (prediction.label, prediction.confidence) == ("b", pytest.approx(1.0))


@pytest.mark.django_db
def test_a_row_without_a_vector_it_may_be_compared_by_has_no_predicted_label():
    """Every labelled row is at distance NULL from it; the vote must not pick a label anyway."""
    spec = Ticket._meta.get_field("embedding").spec()
    with suspend_embedding():
        for category, vector in [("a", unit(1)), ("a", unit(0.9, 0.1)), ("b", unit(0, 1))]:
            Ticket.objects.create(text=f"ticket {category}", category=category, embedding=vector, embedding_spec=spec)
        near_a = Ticket.objects.create(text="near a", embedding=unit(1, 0.05), embedding_spec=spec)
        blank = Ticket.objects.create(text="\u3000\n\t")
        other_model = Ticket.objects.create(text="old", embedding=unit(1), embedding_spec="another model")
    annotated = annotate_predictions(Ticket.objects.filter(category=""), k=3)
    found = {
        pk: (label, confidence)
        for pk, label, confidence in annotated.values_list("pk", "predicted_label", "confidence")
    }
    assert found[near_a.pk][0] == "a"
    assert found[blank.pk] == (None, None)
    assert found[other_model.pk] == (None, None)
    assert list(annotated.filter(predicted_label="a").values_list("pk", flat=True)) == [near_a.pk]
    assert [p.pk for p in predict_labels(Ticket.objects.all(), k=3)] == [near_a.pk]


@pytest.mark.django_db(transaction=True)
def test_the_lazy_annotation_votes_as_predict_labels_does(tickets):
    """However it is evaluated (rows, a filtered count), with its own QuerySet class or not.

    A session whose ``hnsw.ef_search`` is 1 stands for a table where unlabelled rows
    crowd the labelled ones: the index's first candidates hold no labelled row.
    """
    with connection.cursor() as cursor:
        cursor.execute("SET hnsw.ef_search = 1")
    try:
        expected = {p.pk: (p.label, round(p.confidence, 6)) for p in predict_labels(Ticket.objects.all())}
        for rows in (Ticket.objects.all(), models.QuerySet(Ticket)):
            annotated = annotate_predictions(rows, "category")
            found = annotated.filter(pk__in=list(expected)).values_list("pk", "predicted_label", "confidence")
            assert {pk: (label, round(confidence, 6)) for pk, label, confidence in found} == expected
            sure = sum(confidence >= 0.8 for _, confidence in expected.values())
            assert annotated.filter(pk__in=list(expected), confidence__gte=0.8).count() == sure
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET hnsw.ef_search")


@pytest.mark.django_db
def test_neighbours_not_similar_at_all_make_no_suggestion(fake_gemini):
    """Labelled rows at similarity 0 or below weigh nothing: a vote of no weight suggests nothing.

    The texts' vectors come from the fake Gemini (a hashed bag of words), so the
    labelled rows are stored opposite and orthogonal to the one the text gets.
    """
    spec = Ticket._meta.get_field("embedding").spec()
    text = "xyzzy plugh"
    query = np.array(fake_vector(text, 384))
    query /= np.linalg.norm(query)
    orthogonal = np.zeros(384)
    orthogonal[int(np.flatnonzero(query == 0)[0])] = 1.0
    with suspend_embedding():
        waiting = Ticket.objects.create(text=text, embedding=query.tolist(), embedding_spec=spec)
        for category, vector in [("card_arrival", -query), ("exchange_rate", orthogonal), ("card_arrival", -query)]:
            Ticket.objects.create(text="labelled", category=category, embedding=vector.tolist(), embedding_spec=spec)

    assert list(predict_labels(Ticket.objects.all(), k=5)) == []
    annotated = annotate_predictions(Ticket.objects.filter(pk=waiting.pk), k=5)
    assert list(annotated.values_list("predicted_label", "confidence")) == [(None, None)]
    assert suggest_label(Ticket.objects.all(), text, k=5) == Prediction(None, None, 0.0)
    assert apply_predictions(predict_labels(Ticket.objects.all()), Ticket, "category") == 0
    assert Ticket.objects.get(pk=waiting.pk).category == ""


def unit_of(size, *parts):
    vector = np.zeros(size)
    vector[: len(parts)] = parts
    return (vector / np.linalg.norm(vector)).tolist()


def mid_reembed():
    """A table half re-embedded after a change of size and of model: current rows of the field's
    spec, and rows, labelled and not, still holding vectors of a 768-dimensional spec and of another
    model of the same size. Those old vectors point where a vote of theirs would show."""
    field = Ticket._meta.get_field("embedding")
    spec = field.spec()
    bigger = spec.replace("|384", "|768")
    other_model = "local:all-MiniLM-L6-v2|SEMANTIC_SIMILARITY|384"
    assert len({spec, bigger, other_model}) == 3
    rows = [
        ("a", unit(1), spec),
        ("a", unit(0.9, 0.1), spec),
        ("b", unit(0, 1), spec),
        # Old labelled rows, nearest of all to the rows below if they voted.
        ("b", unit(1, 0.02), other_model),
        ("b", unit(1, 0.03), other_model),
        ("b", unit_of(768, 1, 0.02), bigger),
        ("b", unit_of(768, 1, 0.03), bigger),
    ]
    with suspend_embedding():
        for label, vector, spec_ in rows:
            Ticket.objects.create(text=f"ticket {label}", category=label, embedding=vector, embedding_spec=spec_)
        current = Ticket.objects.create(text="near a", embedding=unit(1, 0.05), embedding_spec=spec)
        old_size = Ticket.objects.create(text="old size", embedding=unit_of(768, 0, 1), embedding_spec=bigger)
        old_model = Ticket.objects.create(text="old model", embedding=unit(0, 1), embedding_spec=other_model)
    return current, old_size, old_model


@pytest.mark.django_db
def test_during_a_re_embed_votes_compare_only_vectors_of_the_current_spec():
    """No "different vector dimensions" error, no vote across models, on either side of the vote."""
    current, old_size, old_model = mid_reembed()
    annotated = annotate_predictions(Ticket.objects.filter(category=""), k=3)
    found = {pk: (label, conf) for pk, label, conf in annotated.values_list("pk", "predicted_label", "confidence")}
    assert found[current.pk][0] == "a"
    assert found[old_size.pk] == found[old_model.pk] == (None, None)
    assert list(annotated.filter(confidence__gte=0.5).values_list("pk", flat=True)) == [current.pk]
    assert list(annotated.filter(confidence__isnull=True).order_by("pk").values_list("pk", flat=True)) == [
        old_size.pk,
        old_model.pk,
    ]
    assert list(annotated.order_by("-confidence", "pk").values_list("pk", flat=True))[-1] == current.pk
    for method in ("knn", "linear"):
        predictions = list(predict_labels(Ticket.objects.all(), k=3, method=method))
        assert [p.pk for p in predictions] == [current.pk]
        assert predictions[0].label == "a"


@pytest.mark.django_db
def test_a_text_not_saved_is_voted_on_by_current_vectors_only():
    field = Ticket._meta.get_field("embedding")
    spec = field.spec()
    query = fake_vector("my card", 384)
    away = [0.0] * 384
    away[[abs(x) for x in query].index(0.0)] = 1.0  # orthogonal to the query
    rows = [
        ("a", query, spec),
        ("b", away, spec),
        ("b", query, "local:all-MiniLM-L6-v2|SEMANTIC_SIMILARITY|384"),
        ("b", query, "local:all-MiniLM-L6-v2|SEMANTIC_SIMILARITY|384"),
        ("b", unit_of(768, 1), spec.replace("|384", "|768")),
    ]
    with suspend_embedding():
        for label, vector, spec_ in rows:
            Ticket.objects.create(text=f"ticket {label}", category=label, embedding=vector, embedding_spec=spec_)
    suggestion = suggest_label(Ticket.objects.all(), "my card", k=3)
    assert (suggestion.label, suggestion.confidence) == ("a", pytest.approx(1.0))
