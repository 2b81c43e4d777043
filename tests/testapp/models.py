import uuid
from typing import Any

from django.db import models
from django.db.models.query_utils import DeferredAttribute
from model_utils.managers import InheritanceManager, InheritanceQuerySet
from simple_history.models import HistoricalRecords

from semantic import EmbeddingField, SemanticManager, SemanticQuerySetMixin
from semantic.indexes import EmbeddingIndex


class Article(models.Model):
    """Text from two fields, embedded for similarity."""

    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    embedding = EmbeddingField(source=("title", "body"), dimensions=128)
    category = models.CharField(max_length=20, blank=True, default="")

    objects = SemanticManager()

    class Meta:
        indexes = [EmbeddingIndex(fields=["embedding"], name="article_embedding_hnsw")]

    def __str__(self) -> str:
        return self.title


class Document(models.Model):
    """Two independent embeddings; text from a method; a 3072-dim halfvec."""

    title = models.CharField(max_length=200)
    text = models.TextField(blank=True)
    summary = EmbeddingField(source="title", dimensions=256)
    content = EmbeddingField(source="full_text", task_type="RETRIEVAL_DOCUMENT", title_source="title", dimensions=3072)

    objects = SemanticManager()

    class Meta:
        indexes = [EmbeddingIndex(fields=["content"], name="document_content_hnsw")]

    def full_text(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.title


class Snippet(models.Model):
    """Text from a method that may return bytes PostgreSQL could never store."""

    escaped = models.TextField()
    embedding = EmbeddingField(source="decoded", dimensions=128)

    def decoded(self) -> str:
        return self.escaped.encode("ascii").decode("unicode_escape")


class Note(models.Model):
    """Sized for the local model (384 dimensions)."""

    text = models.TextField()
    embedding = EmbeddingField(source="text", dimensions=384)

    objects = SemanticManager()


class Passage(models.Model):
    """768-dimensional halfvec vectors for the benchmarks (benchmarks/vectors.py)."""

    text = models.TextField()
    group = models.IntegerField(db_index=True, default=0)
    #: The same values as ``group`` with no index: filtered searches the planner must scan for.
    bucket = models.IntegerField(default=0)
    embedding = EmbeddingField(source="text", dimensions=768, halfvec=True)

    objects = SemanticManager()

    class Meta:
        indexes = [EmbeddingIndex(fields=["embedding"], name="passage_embedding_hnsw")]


class Review(models.Model):
    """Moving from one model and size to another with ``replaces`` (semantic.switch)."""

    text = models.TextField()
    embedding = EmbeddingField(source="text", dimensions=128)
    embedding_next = EmbeddingField(
        source="text", embedding_model="gemini-embedding-next", dimensions=256, replaces="embedding"
    )

    objects = SemanticManager()

    def __str__(self) -> str:
        return self.text


class ArticleProxy(Article):
    """Saved through a proxy: its saves are hooked like the model's own."""

    class Meta:
        proxy = True


class FeaturedArticle(Article):
    """A multi-table child: its text and vector live in the parent's table."""

    blurb = models.CharField(max_length=100, blank=True)


class Labelled(models.Model):
    """An abstract base that gives each concrete subclass an EmbeddingField of its own."""

    label = models.CharField(max_length=200)
    embedding = EmbeddingField(source="label", dimensions=128)

    objects = SemanticManager()

    class Meta:
        abstract = True


class Tag(Labelled):
    pass


class Card(models.Model):
    """Text from a field and a method together: hashed in Python."""

    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    views = models.IntegerField(default=0)
    embedding = EmbeddingField(source=("title", "summary"), dimensions=128)

    objects = SemanticManager()

    def summary(self) -> str:
        return self.body.upper()

    def __str__(self) -> str:
        return self.title


class Memo(models.Model):
    """A small row with no EmbeddingField: the baseline of benchmarks/save_latency.py."""

    text = models.TextField()


class EmbeddedMemo(models.Model):
    """:class:`Memo` with an EmbeddingField (sized for the local model): what a save costs with one."""

    text = models.TextField()
    embedding = EmbeddingField(source="text", dimensions=384)


class LongRead(models.Model):
    """A long text searched by its passages (``passages=True``), with a title sent beside each."""

    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    section = models.CharField(max_length=20, blank=True, default="")
    embedding = EmbeddingField(
        source="body", task_type="RETRIEVAL_DOCUMENT", title_source="title", dimensions=128, passages=True
    )

    objects = SemanticManager()

    def __str__(self) -> str:
        return self.title


class Report(models.Model):
    """A long text in passages with a UUID primary key, as many projects have (passages,
    failures and pairs store the key as text, and searches cast it back), and no title
    sent beside it, so it can go through the Batch API."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    embedding = EmbeddingField(source="body", task_type="RETRIEVAL_DOCUMENT", dimensions=128, passages=True)

    objects = SemanticManager()

    def __str__(self) -> str:
        return self.title


class Entry(models.Model):
    """Keyed by text, as codes and slugs are: the key goes to SQL as text, not as a number."""

    code = models.CharField(max_length=40, primary_key=True)
    text = models.TextField(blank=True)
    embedding = EmbeddingField(source="text", dimensions=128)

    objects = SemanticManager()


class Diary(models.Model):
    """Recorded by django-simple-history, whose history model copies every field of this one."""

    text = models.TextField()
    embedding = EmbeddingField(source="text", dimensions=128)
    history = HistoricalRecords()

    objects = SemanticManager()


#: Words and the tag Ledger.upper() adds to a text that holds them: a test changes it as a project
#: changes the code of a method its field reads (``semantic_embed --rehash``).
LEDGER_TAGS: dict[str, str] = {}


class Ledger(models.Model):
    """The same with the vector left out of the history, its hidden columns kept; text from a method."""

    text = models.TextField()
    embedding = EmbeddingField(source="upper", dimensions=128)
    history = HistoricalRecords(excluded_fields=["embedding"])

    objects = SemanticManager()

    def upper(self) -> str:
        tags = [tag for word, tag in LEDGER_TAGS.items() if word in self.text]
        return " ".join([self.text.upper(), *tags])


class ActiveLanguageText(DeferredAttribute):
    """What django-modeltranslation puts on a translated field: the attribute gives the
    active language's column (here always ``text_en``), not the column itself."""

    def __get__(self, instance: Any, cls: Any = None) -> Any:
        if instance is None:
            return self
        return instance.__dict__.get("text_en") or ""

    def __set__(self, instance: Any, value: Any) -> None:  # a data descriptor, as modeltranslation's
        instance.__dict__[self.field.attname] = value


class TranslatedTextField(models.TextField):
    descriptor_class = ActiveLanguageText


class Translated(models.Model):
    """A row whose ``text`` column and ``text`` attribute differ, as under modeltranslation."""

    text = TranslatedTextField(blank=True)
    text_en = models.TextField(blank=True)
    embedding = EmbeddingField(source="text", dimensions=128)


class Invoice(models.Model):
    """A table in a PostgreSQL schema of its own (``db_table = '"schema"."table"'``): its
    name in SQL is qualified, which some clauses (``FOR UPDATE OF``) refuse."""

    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    embedding = EmbeddingField(source=("title", "body"), dimensions=128)

    objects = SemanticManager()

    class Meta:
        db_table = '"billing"."invoice"'
        indexes = [EmbeddingIndex(fields=["embedding"], name="invoice_embedding_hnsw")]

    def __str__(self) -> str:
        return self.title


class Alive(models.Manager):
    """A soft delete's manager, a plain one with no semantic methods: deleted rows are hidden."""

    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(deleted=False)


class Bulletin(models.Model):
    """Soft-deleted rows: the default manager hides them, ``search`` reaches every row."""

    title = models.CharField(max_length=200)
    deleted = models.BooleanField(default=False)
    embedding = EmbeddingField(source="title", dimensions=128)

    objects = Alive()
    search = SemanticManager()

    def __str__(self) -> str:
        return self.title


class PlaceQuerySet(SemanticQuerySetMixin, InheritanceQuerySet):
    """django-model-utils' QuerySet with the mixin, as README "Searching" combines them."""


class Place(models.Model):
    """A parent read as its child classes (``select_subclasses()``), which copy annotations themselves."""

    name = models.CharField(max_length=200)
    embedding = EmbeddingField(source="name", dimensions=128)

    objects = InheritanceManager.from_queryset(PlaceQuerySet)()

    def __str__(self) -> str:
        return self.name


class Restaurant(Place):
    cuisine = models.CharField(max_length=100, blank=True)


class Topic(models.Model):
    name = models.CharField(max_length=100)


class Post(models.Model):
    """Text from a property that reads many-to-many rows, as a django-taggit tag list is read."""

    title = models.CharField(max_length=200)
    topics = models.ManyToManyField(Topic, blank=True, related_name="posts")
    embedding = EmbeddingField(source=("title", "topic_names"), dimensions=128)

    objects = SemanticManager()

    @property
    def topic_names(self) -> str:
        return ", ".join(sorted(topic.name for topic in self.topics.all())) if self.pk else ""

    def __str__(self) -> str:
        return self.title
