from django.db import models

from semantic import EmbeddingField, KeywordIndex, SemanticManager
from semantic.indexes import EmbeddingIndex


class Doc(models.Model):
    """A titled document searched by meaning, by keywords and by both (semantic.hybrid)."""

    title = models.CharField(max_length=300)
    text = models.TextField(blank=True)
    published = models.BooleanField(default=True)
    corpus_id = models.CharField(max_length=40, blank=True, default="", db_index=True)
    embedding = EmbeddingField(
        source=("title", "text"),
        task_type="RETRIEVAL_DOCUMENT",
        title_source="title",
        dimensions=384,
        passages=True,
    )

    objects = SemanticManager()

    class Meta:
        indexes = [
            EmbeddingIndex(fields=["embedding"], name="doc_embedding_hnsw"),
            KeywordIndex(fields=["title", "text"], name="doc_keywords"),
        ]

    def __str__(self) -> str:
        return self.title
