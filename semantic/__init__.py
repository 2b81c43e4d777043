"""django-semantic: embeddings of your models' text in PostgreSQL, kept up to date by django-q2."""

from semantic.embed import embed
from semantic.fields import EmbeddingField
from semantic.query import SemanticManager, SemanticQuerySet
from semantic.tasks import embed_pending, suspend_embedding
from semantic.keyword import KeywordIndex
from semantic.hybrid import HybridQuerySet, HybridSearchMixin, hybrid

__all__ = [
    "EmbeddingField",
    "SemanticManager",
    "SemanticQuerySet",
    "embed",
    "embed_pending",
    "suspend_embedding",
    "KeywordIndex",
    "HybridQuerySet",
    "HybridSearchMixin",
    "hybrid",
]
__version__ = "0.1.0"
