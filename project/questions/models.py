from django.db import models
from django.urls import reverse

from semantic import EmbeddingField, SemanticManager
from semantic.indexes import EmbeddingIndex


class Question(models.Model):
    """A question on a small Q&A board, where asking the same thing twice is common."""

    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    embedding = EmbeddingField(source=("title", "body"), dimensions=384)

    objects = SemanticManager()

    class Meta:
        ordering = ["-created"]
        indexes = [EmbeddingIndex(fields=["embedding"], name="question_embedding_hnsw")]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("questions:detail", args=[self.pk])
