"""Suggesting a label for unlabelled rows from the rows people labelled.

Three ways, for three stages of a table's life:

``method="knn"`` (the default)
    Each unlabelled row asks the HNSW index for its ``k`` nearest labelled rows and
    takes the label with the largest share of their similarity. There is nothing to
    train: a label someone sets now is used by the next prediction. Confidence is
    that share (1.0 when all ``k`` neighbours agree). On Banking77 it is as accurate
    as a logistic regression trained on the same rows (docs/benchmarks.md).
``method="linear"``
    A logistic regression trained on the labelled rows by
    :func:`semantic.linear.train_classifier` and stored in the database; trained on
    first use, retrained by ``manage.py semantic_classify --train``. Confidence is
    its highest class probability.
zero-shot
    Before any row is labelled, the label field's choices (their display names) are
    embedded with the field's task type (``CLASSIFICATION`` for a field declared
    with it) and each row takes the nearest. Used automatically when there are no
    labelled rows.

:func:`suggest_label` gives the same k-NN vote (or zero-shot) for a text that is
not a row yet: a form suggesting a category before it is saved.

A row is labelled when its label is neither NULL nor the empty string. The label
may be a field with choices, a free ``CharField`` or a ``ForeignKey`` (predictions
are then primary keys of the related model).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from django.db import connections, models, transaction
from django.db.models import Case, F, FloatField, OuterRef, Subquery, Value, When
from django.db.models.fields.json import JSONField
from pgvector.django import CosineDistance

from semantic.fields import EmbeddingField
from semantic.labels import NO_EXAMPLES, Prediction, label_field_of, labelled
from semantic.linear import predict_linear
from semantic.query import vector_literal, with_semantic_methods
from semantic.streaming import BATCH_SIZE, normalised, pk_batches, vector_batches
from semantic.switch import serving_field
from semantic.vectors import embed

#: Neighbours that vote: the best of 5 and 10 on the Banking77 hold-out (docs/benchmarks.md).
DEFAULT_K = 5
#: Candidates the index keeps while walking; above ``k`` so that unlabelled rows
#: among the nearest do not leave fewer than ``k`` labelled neighbours.
DEFAULT_EF_SEARCH = 100
#: Zero-shot confidence is a softmax over the similarities divided by this: cosine
#: similarities of a text to different labels differ by a few hundredths, which a
#: plain softmax would flatten to 1 / number of labels.
ZERO_SHOT_TEMPERATURE = 0.02
METHODS = ("knn", "linear", "zero-shot")


class LabelVote(Subquery):
    """The nearest labelled rows' vote for one row, as a correlated subquery.

    ``neighbours`` is a queryset of labelled rows annotated with ``_label`` and
    ``_distance`` (to ``OuterRef``), nearest first and sliced to ``k``; the index
    answers it once per outer row. ``output`` chooses what the expression gives:
    the winning label, its share of the vote, or both as a JSON array
    ``[label, share]`` (one index probe where two columns would cost two).

    A label whose neighbours are all at similarity 0 or below weighs nothing and is
    left out (HAVING), so a row none of whose neighbours is similar at all gets no
    vote (NULL), as a row with no labelled neighbour does: its nearest labels would
    be a guess with no share to call a confidence.
    """

    votes = (
        "SELECT v._label, v.weight / SUM(v.weight) OVER () AS share, v.nearest "
        "FROM (SELECT n._label, SUM(GREATEST(1 - n._distance, 0)) AS weight, MIN(n._distance) AS nearest "
        "FROM (%(subquery)s) n GROUP BY n._label HAVING SUM(GREATEST(1 - n._distance, 0)) > 0) v "
        "ORDER BY v.weight DESC, v.nearest ASC LIMIT 1"
    )
    outputs = {
        "label": "(SELECT w._label FROM ({votes}) w)",
        "share": "(SELECT w.share FROM ({votes}) w)",
        "both": "(SELECT jsonb_build_array(w._label, w.share) FROM ({votes}) w)",
    }

    def __init__(self, neighbours: models.QuerySet, *, output: str, output_field: models.Field) -> None:
        self.template = self.outputs[output].format(votes=self.votes)
        super().__init__(neighbours, output_field=output_field)


def neighbours(
    examples: models.QuerySet, embedding: EmbeddingField, label_field: models.Field, k: int, target: Any = None
) -> models.QuerySet:
    """The ``k`` labelled rows nearest the outer row (or ``target``, a vector expression), for :class:`LabelVote`."""
    target = target if target is not None else OuterRef(embedding.attname)
    return (
        examples.filter(embedding.searchable() & labelled(label_field))
        .annotate(
            _label=F(label_field.attname),
            # The sized expression, as the HNSW index (EmbeddingIndex) holds it, so the index serves the vote.
            _distance=CosineDistance(embedding.indexed_vector(), target),
        )
        .order_by("_distance")
        .values("_label", "_distance")[:k]
    )


def annotate_predictions(
    queryset: models.QuerySet,
    label: str = "category",
    *,
    field: str | None = None,
    k: int = DEFAULT_K,
    examples: models.QuerySet | None = None,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> models.QuerySet:
    """``queryset`` annotated with ``predicted_label`` and ``confidence`` (nearest neighbours).

    An ordinary lazy queryset: ``.filter(confidence__lt=0.6)``, ordering, slicing and
    pagination work. Each annotation probes the index once per row it is computed
    for, so it suits pages of rows; :func:`predict_labels` labels whole tables with
    one probe per row. Rows without a vector that may be compared (no text, not
    embedded yet, or made by another model) get NULL for both, as :func:`predict_labels`
    leaves them out.
    """
    model = queryset.model
    embedding = serving_field(model, field)
    label_field = label_field_of(model, label)
    check_k(k)
    near = neighbours(examples if examples is not None else model._default_manager.all(), embedding, label_field, k)
    label_output = label_field.target_field if label_field.is_relation else label_field
    # Every neighbour of a row without a vector is at distance NULL, and the vote would still
    # pick a label (with a NULL share): only a row the search may compare takes a vote.
    searchable = embedding.searchable()
    # The vote needs the iterative scan whenever the rows are read, as predict_labels() has it
    # (voting_scan()): without it the index returns its ef_search nearest rows and, where
    # unlabelled rows crowd them, fewer than k labelled ones are left, or none.
    return voting(queryset, k=k, ef_search=ef_search).annotate(
        predicted_label=Case(
            When(searchable, then=LabelVote(near, output="label", output_field=label_output)),
            default=None,
            output_field=label_output,
        ),
        confidence=Case(
            When(searchable, then=LabelVote(near, output="share", output_field=FloatField())),
            default=None,
            output_field=FloatField(),
        ),
    )


def predict_labels(
    queryset: models.QuerySet,
    label: str = "category",
    *,
    field: str | None = None,
    method: str = "knn",
    k: int = DEFAULT_K,
    examples: models.QuerySet | None = None,
    batch_size: int = BATCH_SIZE,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> Iterator[Prediction]:
    """A :class:`Prediction` for each unlabelled row of ``queryset`` that has a vector
    (and, for the vote, a labelled neighbour similar at all: see :class:`LabelVote`).

    Learns from the labelled rows of ``examples`` (default: every row of the model).
    Rows are read in primary-key batches of ``batch_size``, so any table size works
    in constant memory; a generator, so callers can report progress. Falls back to
    zero-shot when nothing is labelled yet.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    check_k(k)
    model = queryset.model
    embedding = serving_field(model, field)
    label_field = label_field_of(model, label)
    examples = examples if examples is not None else model._default_manager.all()
    rows = unlabelled(queryset, label, field=field)
    has_examples = examples.filter(embedding.searchable() & labelled(label_field)).exists()
    if method == "zero-shot" or not has_examples:
        yield from zero_shot(rows, embedding, label_field, batch_size=batch_size)
    elif method == "linear":
        yield from predict_linear(rows, embedding, label_field, examples=examples, batch_size=batch_size)
    else:
        yield from knn(rows, examples, embedding, label_field, k=k, batch_size=batch_size, ef_search=ef_search)


def unlabelled(queryset: models.QuerySet, label: str = "category", *, field: str | None = None) -> models.QuerySet:
    """The rows of ``queryset`` that :func:`predict_labels` would label: no label, a vector."""
    embedding = serving_field(queryset.model, field)
    return queryset.filter(embedding.searchable()).exclude(labelled(label_field_of(queryset.model, label)))


def knn(
    rows: models.QuerySet,
    examples: models.QuerySet,
    embedding: EmbeddingField,
    label_field: models.Field,
    *,
    k: int,
    batch_size: int,
    ef_search: int,
) -> Iterator[Prediction]:
    vote = LabelVote(neighbours(examples, embedding, label_field, k), output="both", output_field=JSONField())
    connection = connections[rows.db]
    for batch in pk_batches(rows, batch_size):
        query = batch.annotate(_vote=vote).values_list("pk", "_vote")
        with voting_scan(connection, k=k, ef_search=ef_search):
            results = list(query)
        for pk, vote_value in results:
            if vote_value is not None:
                yield Prediction(pk, vote_value[0], float(vote_value[1]))


def zero_shot(
    rows: models.QuerySet, embedding: EmbeddingField, label_field: models.Field, *, batch_size: int
) -> Iterator[Prediction]:
    """The nearest of the label field's choices, by their display names."""
    values, described = described_choices(embedding, label_field)
    for pks, vectors, _ in vector_batches(rows, embedding, batch_size):
        shares = choice_shares(normalised(vectors), described)
        best = shares.argmax(axis=1)
        for pk, index, row in zip(pks, best, shares):
            yield Prediction(pk, values[index], float(row[index]))


def described_choices(embedding: EmbeddingField, label_field: models.Field) -> tuple[list[Any], np.ndarray]:
    """The label field's choice values, and their display names' unit vectors."""
    # A plain CharField has none: Django's get_choices() would take it for a relation.
    has_choices = label_field.choices is not None or label_field.remote_field is not None
    choices = (
        [(value, str(name)) for value, name in label_field.get_choices(include_blank=False)] if has_choices else []
    )
    if not choices:
        raise ValueError(NO_EXAMPLES.format(label=label_field.model._meta.label, field=label_field.name))
    described = np.array(
        embed(
            [name for _, name in choices],
            task_type=embedding.task_type,
            dimensions=embedding.dimensions,
            model=embedding.embedding_model,
        ),
        dtype=np.float32,
    )
    described /= np.linalg.norm(described, axis=1, keepdims=True)
    return [value for value, _ in choices], described


def choice_shares(unit_vectors: np.ndarray, described: np.ndarray) -> np.ndarray:
    """Each row's softmax over its similarities to the choices (see ``ZERO_SHOT_TEMPERATURE``)."""
    scaled = unit_vectors @ described.T / ZERO_SHOT_TEMPERATURE
    scaled -= scaled.max(axis=1, keepdims=True)
    shares = np.exp(scaled)
    return shares / shares.sum(axis=1, keepdims=True)


def suggest_label(
    examples: models.QuerySet,
    text: str,
    label: str = "category",
    *,
    field: str | None = None,
    k: int = DEFAULT_K,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> Prediction:
    """The label for a text that is not a row yet, such as a form's before it is saved.

    The ``k`` labelled rows of ``examples`` nearest to ``text`` vote as they do for
    :func:`predict_labels` (the same SQL); with no labelled row, the nearest choice
    (zero-shot). The text is embedded as a stored row's would be (the field's own
    task type), through the query cache and the rate limit, so it raises
    :class:`semantic.EmptyQuery` and :class:`semantic.SearchUnavailable` as
    ``similar_to()`` does. The prediction's ``pk`` is None, and so is its label when
    no labelled row is near (see :class:`LabelVote`).
    """
    check_k(k)
    model = examples.model
    embedding = serving_field(model, field)
    label_field = label_field_of(model, label)
    (vector,) = embed(
        [text], task_type=embedding.task_type, dimensions=embedding.dimensions, model=embedding.embedding_model
    )
    if not examples.filter(embedding.searchable() & labelled(label_field)).exists():
        values, described = described_choices(embedding, label_field)
        (shares,) = choice_shares(normalised(np.array([vector], dtype=np.float32)), described)
        return Prediction(None, values[int(shares.argmax())], float(shares.max()))
    near = neighbours(examples, embedding, label_field, k, target=Value(vector_literal(vector)))
    vote = LabelVote(near, output="both", output_field=JSONField())
    inner, params = near.query.get_compiler(examples.db).as_sql()
    connection = connections[examples.db]
    with voting_scan(connection, k=k, ef_search=ef_search), connection.cursor() as cursor:
        cursor.execute("SELECT " + vote.template % {"subquery": inner}, params)
        (result,) = cursor.fetchone()
    if result is None:
        return Prediction(None, None, 0.0)
    winner, share = json.loads(result)  # Django leaves jsonb as text for its JSONField to decode
    return Prediction(None, label_field.to_python(winner), float(share))


def voting_settings(*, k: int, ef_search: int) -> dict[str, str]:
    return {"hnsw.ef_search": str(max(ef_search, k)), "hnsw.iterative_scan": "strict_order"}


def voting(queryset: models.QuerySet, *, k: int, ef_search: int) -> models.QuerySet:
    """``queryset``, each of its statements sent with :func:`voting_settings` (a queryset
    without :class:`SemanticQuerySetMixin` gets it: :func:`semantic.query.with_semantic_methods`)."""
    return with_semantic_methods(queryset).with_index_settings(**voting_settings(k=k, ef_search=ef_search))


@contextmanager
def voting_scan(connection: Any, *, k: int, ef_search: int) -> Iterator[None]:
    """A transaction in which the HNSW scan finds ``k`` labelled neighbours.

    Unlabelled rows among the nearest are filtered out after the index scan; the
    iterative scan walks on until ``k`` labelled rows are found.
    """
    settings = voting_settings(k=k, ef_search=ef_search)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', %s, true)",
            [settings["hnsw.ef_search"], settings["hnsw.iterative_scan"]],
        )
        yield


def apply_predictions(
    predictions: Iterator[Prediction],
    model: type[models.Model],
    label: str,
    *,
    min_confidence: float = 0.0,
    using: str | None = None,
) -> int:
    """Write the labels of predictions at least ``min_confidence`` sure; returns rows written.

    A row someone labelled since the prediction was made keeps its label.
    """
    label_field = label_field_of(model, label)
    by_label: dict[Any, list[Any]] = {}
    for prediction in predictions:
        if prediction.confidence >= min_confidence:
            by_label.setdefault(prediction.label, []).append(prediction.pk)
    manager = model._base_manager.db_manager(using)
    written = 0
    for value, pks in by_label.items():
        for start in range(0, len(pks), BATCH_SIZE):
            chunk = pks[start : start + BATCH_SIZE]
            written += (
                manager.filter(pk__in=chunk).exclude(labelled(label_field)).update(**{label_field.attname: value})
            )
    return written


def check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise ValueError(f"k must be an integer from 1 to 1000, not {k!r}.")
