"""A logistic regression over the embeddings, trained from the table and kept in it.

Training reads the labelled rows' vectors in batches into one float32 array (the
estimator needs them all at once: rows x dimensions x 4 bytes, 15 MB for 10,000
rows of 384) and fits scikit-learn's ``LogisticRegression``. The weights are stored
in :class:`semantic.models.Classifier`; predicting is a matrix product and a
softmax over batches of rows, the same arithmetic as ``predict_proba``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from django.apps import apps
from django.db import models

from semantic.fields import EmbeddingField
from semantic.labels import NO_EXAMPLES, Prediction, label_field_of, labelled
from semantic.streaming import BATCH_SIZE, normalised, vector_batches
from semantic.switch import serving_field

#: Inverse regularisation strength. Unit-length sentence vectors are small numbers, and scikit-learn's
#: default (1.0) underfits them: on two Banking77 hold-outs 10 gained 2 points over 1 and 100 lost some
#: of them again (docs/benchmarks.md). ``train_classifier(C=...)`` takes another.
DEFAULT_C = 10.0
MAX_ITER = 1000
ONE_LABEL = "{label} has labelled rows of one label only ({value!r}); a classifier needs at least two."


def train_classifier(
    model: type[models.Model],
    label: str = "category",
    *,
    field: str | None = None,
    examples: models.QuerySet | None = None,
    C: float = DEFAULT_C,
    batch_size: int = BATCH_SIZE,
) -> Any:
    """Fit a logistic regression on the labelled rows and store it, replacing the last one."""
    from sklearn.linear_model import LogisticRegression

    embedding = serving_field(model, field)
    label_field = label_field_of(model, label)
    rows = (examples if examples is not None else model._default_manager.all()).filter(
        embedding.searchable() & labelled(label_field)
    )
    total = rows.count()
    if not total:
        raise ValueError(NO_EXAMPLES.format(label=model._meta.label, field=label_field.name))
    vectors = np.empty((total, embedding.dimensions), dtype=np.float32)
    labels: list[Any] = []
    filled = 0
    for batch in vector_batches(rows, embedding, batch_size, extra=(label_field.attname,)):
        size = min(len(batch.pks), total - filled)  # rows added while reading wait for the next training
        vectors[filled : filled + size] = normalised(batch.vectors[:size])
        labels += [extra[0] for extra in batch.extra[:size]]
        filled += size
    vectors = vectors[:filled]
    if len(set(labels)) < 2:
        raise ValueError(ONE_LABEL.format(label=model._meta.label, value=labels[0]))
    estimator = LogisticRegression(C=C, max_iter=MAX_ITER).fit(vectors, labels)
    weights, intercepts = estimator.coef_, estimator.intercept_
    if weights.shape[0] == 1:
        # Two labels: scikit-learn keeps one row, the second label's log-odds; a zero
        # row for the first gives the same probabilities through the softmax.
        weights = np.vstack([np.zeros_like(weights), weights])
        intercepts = np.concatenate([[0.0], intercepts])
    classifier, _ = classifier_model().objects.update_or_create(
        model_label=model._meta.label,
        field_name=embedding.name,
        label_field=label_field.name,
        defaults={
            "spec": embedding.spec(),
            "classes": [to_json(value) for value in estimator.classes_],
            "weights": weights.astype(np.float32).tobytes(),
            "intercepts": intercepts.astype(np.float32).tobytes(),
            "rows": filled,
        },
    )
    return classifier


def classifier_model() -> type[models.Model]:
    """:class:`semantic.models.Classifier`, looked up when used: this module is part of the
    public API imported by ``semantic/__init__.py``, before the app registry is ready."""
    return apps.get_model("semantic", "Classifier")


def stored_classifier(model: type[models.Model], embedding: EmbeddingField, label_field: models.Field) -> Any:
    """The classifier trained on this field's current kind of vectors, if any."""
    return (
        classifier_model()
        .objects.filter(
            model_label=model._meta.label,
            field_name=embedding.name,
            label_field=label_field.name,
            spec=embedding.spec(),
        )
        .first()
    )


def predict_linear(
    rows: models.QuerySet,
    embedding: EmbeddingField,
    label_field: models.Field,
    *,
    examples: models.QuerySet,
    batch_size: int = BATCH_SIZE,
) -> Iterator[Prediction]:
    """Predictions of the stored classifier, trained first when there is none."""
    model = rows.model
    classifier = stored_classifier(model, embedding, label_field)
    if classifier is None:
        classifier = train_classifier(model, label_field.name, field=embedding.name, examples=examples)
    weights = np.frombuffer(bytes(classifier.weights), dtype=np.float32).reshape(len(classifier.classes), -1)
    intercepts = np.frombuffer(bytes(classifier.intercepts), dtype=np.float32)
    for batch in vector_batches(rows, embedding, batch_size):
        scores = normalised(batch.vectors) @ weights.T + intercepts
        scores -= scores.max(axis=1, keepdims=True)
        probabilities = np.exp(scores)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        for pk, index, row in zip(batch.pks, best, probabilities):
            yield Prediction(pk, classifier.classes[index], float(row[index]))


def to_json(value: Any) -> Any:
    """A label as JSON can hold it (numpy scalars from scikit-learn become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value
