from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models.functions import Left

from semantic import EmbeddingField, KeywordIndex, SemanticManager
from semantic.indexes import EmbeddingIndex


class Doc(models.Model):
    """A titled document searched by meaning, by keywords and by both (semantic.hybrid);
    its words are a stored ``tsvector`` column that PostgreSQL keeps in step."""

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
    search = models.GeneratedField(
        expression=SearchVector("title", Left("text", 100_000), config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    objects = SemanticManager()

    class Meta:
        indexes = [
            EmbeddingIndex(fields=["embedding"], name="doc_embedding_hnsw"),
            KeywordIndex(fields=["search"], name="doc_keywords"),
        ]

    def __str__(self) -> str:
        return self.title


class Page(models.Model):
    """Doc's twin whose KeywordIndex is an expression over the text fields: no column."""

    title = models.CharField(max_length=300)
    text = models.TextField(blank=True)
    published = models.BooleanField(default=True)
    embedding = EmbeddingField(
        source=("title", "text"), task_type="RETRIEVAL_DOCUMENT", title_source="title", dimensions=384
    )

    objects = SemanticManager()

    class Meta:
        indexes = [
            EmbeddingIndex(fields=["embedding"], name="page_embedding_hnsw"),
            KeywordIndex(fields=["title", "text"], name="page_keywords"),
        ]

    def __str__(self) -> str:
        return self.title


class Excerpt(models.Model):
    """Short pieces of documents, by the hundred thousand: hybrid search's latency at that
    size (``benchmarks/scifact.py`` stores them with their vectors)."""

    text = models.TextField()
    embedding = EmbeddingField(source="text", task_type="RETRIEVAL_DOCUMENT", dimensions=384)
    search = models.GeneratedField(
        expression=SearchVector(Left("text", 100_000), config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    objects = SemanticManager()

    class Meta:
        indexes = [
            EmbeddingIndex(fields=["embedding"], name="excerpt_embedding_hnsw"),
            KeywordIndex(fields=["search"], name="excerpt_keywords"),
        ]

    def __str__(self) -> str:
        return self.text[:60]


class Shelf(models.Model):
    """Docs filed on shelves (a ManyToMany): searches over a join that repeats a row per shelf."""

    name = models.CharField(max_length=40)
    docs = models.ManyToManyField(Doc, related_name="shelves")

    def __str__(self) -> str:
        return self.name
