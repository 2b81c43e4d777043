"""django-semantic: embeddings of your models' text in PostgreSQL, kept up to date by django-q2."""

from semantic.classify import annotate_predictions, apply_predictions, predict_labels
from semantic.clusters import cluster
from semantic.embed import EmptyQuery, SearchUnavailable, embed
from semantic.fields import EmbeddingField
from semantic.query import SemanticManager, SemanticQuerySet, SemanticQuerySetMixin
from semantic.tasks import embed_pending, suspend_embedding

__all__ = [
    "EmbeddingField",
    "EmptyQuery",
    "SearchUnavailable",
    "SemanticManager",
    "SemanticQuerySet",
    "SemanticQuerySetMixin",
    "annotate_predictions",
    "apply_predictions",
    "cluster",
    "embed",
    "embed_pending",
    "predict_labels",
    "suspend_embedding",
]
__version__ = "0.1.0"
