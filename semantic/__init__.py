"""django-semantic: embeddings of your models' text in PostgreSQL, kept up to date by django-q2."""

from typing import TYPE_CHECKING

from semantic.classify import annotate_predictions, apply_predictions, predict_labels, suggest_label
from semantic.clusters import cluster
from semantic.context import Context, ContextPassage, acontext, context
from semantic.fields import EmbeddingField
from semantic.hooks import suspend_embedding
from semantic.hybrid import HybridQuerySet, HybridSearchMixin, ahybrid, hybrid
from semantic.keyword_index import KeywordIndex
from semantic.passages import Passages
from semantic.query import SemanticManager, SemanticQuerySet, SemanticQuerySetMixin
from semantic.vectors import EmptyQuery, SearchUnavailable, embed

__all__ = [
    "Context",
    "ContextPassage",
    "EmbeddingField",
    "EmptyQuery",
    "Passages",
    "SearchUnavailable",
    "SemanticManager",
    "SemanticQuerySet",
    "SemanticQuerySetMixin",
    "acontext",
    "annotate_predictions",
    "apply_predictions",
    "cluster",
    "context",
    "embed",
    "embed_pending",
    "predict_labels",
    "suggest_label",
    "suspend_embedding",
    "KeywordIndex",
    "HybridQuerySet",
    "HybridSearchMixin",
    "ahybrid",
    "hybrid",
]
__version__ = "0.1.0"

if TYPE_CHECKING:  # what __getattr__ below returns, for type checkers (not imported at run time)
    from semantic.tasks import embed_pending


def __getattr__(name: str) -> object:
    # The worker's entry points import the app's models, which may not be imported while
    # Django loads the apps (this package is what INSTALLED_APPS names): loaded on first use.
    if name == "embed_pending":
        from semantic.tasks import embed_pending

        return embed_pending
    raise AttributeError(f"module 'semantic' has no attribute {name!r}")
