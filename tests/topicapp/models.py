"""Support tickets for classification and clustering (semantic.classify, semantic.clusters)."""

from django.db import models
from django.utils import timezone

from semantic import EmbeddingField, SemanticManager
from semantic.indexes import EmbeddingIndex

#: A few Banking77 intents with descriptions people would write: what zero-shot
#: classification embeds before anyone has labelled a ticket. The column takes any
#: of the 77 intents (the benchmark stores them all); choices only describe these.
CATEGORIES = [
    ("card_arrival", "My new card has not arrived yet"),
    ("exchange_rate", "Question about currency exchange rates"),
    ("passcode_forgotten", "I forgot my passcode"),
    ("atm_support", "Using my card at a cash machine (ATM)"),
    ("lost_or_stolen_phone", "My phone was lost or stolen"),
    ("terminate_account", "I want to close my account"),
]


class Ticket(models.Model):
    text = models.TextField()
    category = models.CharField(max_length=60, blank=True, default="", choices=CATEGORIES)
    created = models.DateTimeField(default=timezone.now)
    embedding = EmbeddingField(source="text", dimensions=384)

    objects = SemanticManager()

    class Meta:
        indexes = [EmbeddingIndex(fields=["embedding"], name="ticket_embedding_hnsw")]

    def __str__(self) -> str:
        return self.text


class Queue(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Request(models.Model):
    """Labelled by a ForeignKey: suggestions are rows of another table, shown by name."""

    text = models.TextField()
    queue = models.ForeignKey(Queue, null=True, blank=True, on_delete=models.SET_NULL)
    embedding = EmbeddingField(source="text", dimensions=384)

    objects = SemanticManager()
