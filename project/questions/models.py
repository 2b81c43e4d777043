from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models.functions import Left
from django.urls import reverse

from semantic import EmbeddingField, KeywordIndex, SemanticManager
from semantic.indexes import EmbeddingIndex


class Category(models.TextChoices):
    """The board's sections. The display names double as zero-shot descriptions
    (semantic.classify) when no question is labelled yet, so they say what is inside."""

    ACCOUNT = "account", "Account and sign-in"
    BILLING = "billing", "Billing and payments"
    TEAMS = "teams", "Teams and workspaces"
    INTEGRATIONS = "integrations", "Integrations and API"
    TROUBLESHOOTING = "troubleshooting", "Errors, crashes and slowness"
    SETTINGS = "settings", "Settings and features"
    DATA = "data", "Data, export and security"


class Question(models.Model):
    """A question on a small Q&A board, where asking the same thing twice is common.

    ``embedding`` holds the question alone (title and body): "did you mean…?", similar
    questions, category suggestions and the thresholds in relevance.py compare
    questions with questions. The answer runs to several paragraphs, longer than the
    local model reads (about 900 characters), so ``answer_embedding`` cuts it into
    passages, each with a vector of its own: search shows, under each question, the
    part of its answer nearest to the query. The answer's words are searched too
    (``search``, a column PostgreSQL keeps in step, under the KeywordIndex), so a term
    only the answer uses still finds the question.
    """

    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    answer = models.TextField(blank=True)
    category = models.CharField(max_length=20, choices=Category.choices, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    embedding = EmbeddingField(source=("title", "body"), dimensions=384)
    answer_embedding = EmbeddingField(
        source="answer", title_source="title", task_type="RETRIEVAL_DOCUMENT", passages=True, dimensions=384
    )
    search = models.GeneratedField(
        # 100,000 characters of the long fields: PostgreSQL refuses a tsvector over 1 MB (README: Keyword search).
        expression=SearchVector("title", Left("body", 50_000), Left("answer", 50_000), config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    objects = SemanticManager()

    class Meta:
        ordering = ["-created"]
        indexes = [
            EmbeddingIndex(fields=["embedding"], name="question_embedding_hnsw"),
            KeywordIndex(fields=["search"], name="question_keywords"),
        ]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("questions:detail", args=[self.pk])
