from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _
from pgvector.django import VectorField


class EmbeddingFailure(models.Model):
    """A row whose text could not be embedded, with the last error.

    Deleted as soon as the row is embedded, and with the row (the sweep finds rows
    deleted behind the ORM's back). Transient failures (rate limits, server
    errors, time-outs) are retried by the sweep after ``retry_at``; permanent ones
    (the API rejected the text) wait until the text changes or
    ``manage.py semantic_embed --failed`` retries them.
    """

    model_label = models.CharField(_("model"), max_length=200)
    field_name = models.CharField(_("field"), max_length=200)
    object_pk = models.CharField(_("object id"), max_length=200)
    source_hash = models.CharField(_("text hash"), max_length=32, null=True, blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    error = models.TextField(_("error"))
    permanent = models.BooleanField(_("permanent"), default=False)
    first_failed_at = models.DateTimeField(_("first failed"), auto_now_add=True)
    last_failed_at = models.DateTimeField(_("last failed"), auto_now=True)
    retry_at = models.DateTimeField(_("retry after"), null=True, blank=True)

    class Meta:
        verbose_name = _("embedding failure")
        verbose_name_plural = _("embedding failures")
        constraints = [
            models.UniqueConstraint(
                fields=["model_label", "field_name", "object_pk"], name="semantic_failure_unique_row"
            )
        ]
        ordering = ["-last_failed_at"]

    def __str__(self) -> str:
        return f"{self.model_label}.{self.field_name} #{self.object_pk}"


class DismissedPair(models.Model):
    """Two rows someone marked "not a duplicate", so duplicate review stops showing them."""

    model_label = models.CharField(_("model"), max_length=200)
    field_name = models.CharField(_("field"), max_length=200)
    first_pk = models.CharField(_("first object id"), max_length=200)
    second_pk = models.CharField(_("second object id"), max_length=200)
    dismissed_by = models.CharField(_("dismissed by"), max_length=150, blank=True)
    dismissed_at = models.DateTimeField(_("dismissed at"), auto_now_add=True)

    class Meta:
        verbose_name = _("pair marked not a duplicate")
        verbose_name_plural = _("pairs marked not duplicates")
        constraints = [
            models.UniqueConstraint(
                fields=["model_label", "field_name", "first_pk", "second_pk"], name="semantic_dismissed_pair_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_label} #{self.first_pk} ≠ #{self.second_pk}"

    @classmethod
    def ordered(cls, a: object, b: object) -> tuple[str, str]:
        first, second = sorted([a, b])  # type: ignore[type-var]
        return str(first), str(second)


class RateLimit(models.Model):
    """Requests and tokens spent in the current window, shared by every worker and command.

    One row per backend model and API key (``key`` holds a hash, never the key).
    ``paused_until`` is set when the API answers 429, so every process waits.
    ``problem`` says what is wrong with the key or model when the API refused them
    (what to fix, never the key); it is cleared by the next request that succeeds.
    """

    key = models.CharField(_("key"), max_length=100, primary_key=True)
    window_start = models.DateTimeField(_("window start"))
    requests = models.PositiveIntegerField(_("requests"), default=0)
    tokens = models.PositiveBigIntegerField(_("tokens"), default=0)
    paused_until = models.DateTimeField(_("paused until"), null=True, blank=True)
    problem = models.TextField(_("configuration problem"), blank=True, default="", db_default="")
    problem_at = models.DateTimeField(_("problem seen"), null=True, blank=True)

    class Meta:
        verbose_name = _("rate limit")
        verbose_name_plural = _("rate limits")

    def __str__(self) -> str:
        return self.key


class FieldSwitch(models.Model):
    """Queries that name ``field_name`` of ``model_label`` are served by ``serving_field``.

    Written by ``manage.py semantic_embed app.Model.<field> --switch`` once the field
    that ``replaces`` another is fully embedded; see :mod:`semantic.switch`.
    """

    model_label = models.CharField(_("model"), max_length=200)
    field_name = models.CharField(_("field"), max_length=200)
    serving_field = models.CharField(_("served by"), max_length=200)
    switched_at = models.DateTimeField(_("switched at"), auto_now=True)

    class Meta:
        verbose_name = _("embedding field switch")
        verbose_name_plural = _("embedding field switches")
        constraints = [models.UniqueConstraint(fields=["model_label", "field_name"], name="semantic_switch_unique")]

    def __str__(self) -> str:
        return f"{self.model_label}.{self.field_name} → {self.serving_field}"


class EmbeddingBatchJob(models.Model):
    """A Gemini Batch API job submitted by ``semantic_embed --batch-api``.

    Holds what is needed to write the results back after the command was stopped:
    each row's primary key and the hash of the text sent. While a job is open, its
    rows are left to it: workers and the sweep do not embed them again.
    """

    name = models.CharField(_("job name"), max_length=200, unique=True)
    model_label = models.CharField(_("model"), max_length=200)
    field_name = models.CharField(_("field"), max_length=200)
    spec = models.CharField(_("model | task type | dimensions"), max_length=200)
    rows = models.PositiveIntegerField(_("rows"))
    first_pk = models.CharField(_("first object id"), max_length=200)
    last_pk = models.CharField(_("last object id"), max_length=200)
    #: ``[[object_pk, text_hash], ...]`` in the order the texts were sent; for a passage job
    #: ``[[object_pk, position, passage text hash, row text hash], ...]``.
    items = models.JSONField(_("rows sent"))
    #: Whether the job carries passages of rows whose vectors are current (``rows`` counts passages).
    passages = models.BooleanField(_("passages"), default=False, db_default=False)
    state = models.CharField(_("state"), max_length=40, default="JOB_STATE_PENDING")
    error = models.TextField(_("error"), blank=True)
    embedded = models.PositiveIntegerField(_("embedded"), default=0)
    failed = models.PositiveIntegerField(_("failed"), default=0)
    submitted_at = models.DateTimeField(_("submitted"), auto_now_add=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("embedding batch job")
        verbose_name_plural = _("embedding batch jobs")
        ordering = ["-submitted_at"]
        indexes = [models.Index(fields=["model_label", "field_name", "finished_at"], name="semantic_batch_open")]

    def __str__(self) -> str:
        return self.name


class Classifier(models.Model):
    """A linear classifier trained from the rows people labelled (see :mod:`semantic.linear`).

    One per model, embedding field and label field. Holds the learned weights as
    float32 arrays rather than a pickled estimator: predicting needs only a matrix
    product, and loading bytes from the database never runs code. ``spec`` records
    which vectors it was trained on, so vectors of another model or size are not
    fed to it.
    """

    model_label = models.CharField(_("model"), max_length=200)
    field_name = models.CharField(_("field"), max_length=200)
    label_field = models.CharField(_("label field"), max_length=200)
    spec = models.CharField(_("model | task type | dimensions"), max_length=200)
    #: The labels, in the order of the weights' rows.
    classes = models.JSONField(_("labels"))
    weights = models.BinaryField(_("weights"))
    intercepts = models.BinaryField(_("intercepts"))
    rows = models.PositiveIntegerField(_("rows trained on"))
    trained_at = models.DateTimeField(_("trained"), auto_now=True)

    class Meta:
        verbose_name = _("label classifier")
        verbose_name_plural = _("label classifiers")
        constraints = [
            models.UniqueConstraint(
                fields=["model_label", "field_name", "label_field"], name="semantic_classifier_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_label}.{self.label_field} from {self.field_name}"


class Passage(models.Model):
    """One passage of a row's text and its vector, for an EmbeddingField with ``passages``.

    The rows of every such field share this table, so the users' tables and
    migrations stay as they are. ``cut_from`` is the MD5 of the row's text hash and
    the passage sizes and rules the passages were cut with: when it differs from the row's,
    the row's passages are cut again, and a passage whose ``text_hash`` (its text
    and the row's title) and ``spec`` are unchanged keeps its vector. The vector has
    no declared size, as rows of several fields and sizes share the column: searches
    compare passages exactly, without an HNSW index, which needs one size.
    """

    model_label = models.CharField(_("model"), max_length=200)
    field_name = models.CharField(_("field"), max_length=200)
    object_pk = models.CharField(_("object id"), max_length=200)
    position = models.PositiveIntegerField(_("position"))
    start = models.PositiveIntegerField(_("first character"))
    end = models.PositiveIntegerField(_("end character"))
    text = models.TextField(_("text"))
    text_hash = models.CharField(_("text hash"), max_length=32)
    cut_from = models.CharField(_("row text hash and sizes"), max_length=32)
    spec = models.CharField(_("model | task type | dimensions"), max_length=200)
    vector = VectorField(_("vector"))

    class Meta:
        verbose_name = _("passage")
        verbose_name_plural = _("passages")
        constraints = [
            models.UniqueConstraint(
                fields=["model_label", "field_name", "object_pk", "position"], name="semantic_passage_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_label}.{self.field_name} #{self.object_pk} [{self.position}]"


class FieldDefinitionManager(models.Manager):
    def get_by_natural_key(self, model_label: str, field_name: str) -> FieldDefinition:
        return self.get(model_label=model_label, field_name=field_name)


class FieldDefinition(models.Model):
    """What makes an EmbeddingField's vectors, as the newest process that ran it defines it.

    ``definition`` names the model, task type and size, the text's parts and the passage
    sizes; ``since`` is when the process that recorded it started. A process started
    before ``since`` whose own definition differs runs older code or settings: it
    embeds nothing (see :mod:`semantic.definitions`), so that the two versions do not
    re-embed each other's rows for as long as both run.

    Known by the field it names (:meth:`natural_key`), not by its id: ``migrate`` numbers
    the definitions in the order it meets the fields, so a database migrated in one go
    numbers them unlike one whose fields came over time, and a ``dumpdata
    --natural-primary`` of one must load over the rows ``migrate`` recorded in the other.
    """

    model_label = models.CharField(_("model"), max_length=200)
    field_name = models.CharField(_("field"), max_length=200)
    definition = models.TextField(_("definition"))
    since = models.DateTimeField(_("current since"))

    objects = FieldDefinitionManager()

    class Meta:
        verbose_name = _("embedding field definition")
        verbose_name_plural = _("embedding field definitions")
        constraints = [models.UniqueConstraint(fields=["model_label", "field_name"], name="semantic_definition_unique")]

    def __str__(self) -> str:
        return f"{self.model_label}.{self.field_name}"

    def natural_key(self) -> tuple[str, str]:
        return (self.model_label, self.field_name)


class ReviewSelection(models.Model):
    """Rows a user selected for "Find duplicates among selected", named in the review's links
    by ``token`` (see :mod:`semantic.admin_selection`)."""

    token = models.CharField(_("token"), max_length=32, unique=True)
    user_pk = models.CharField(_("user id"), max_length=200)
    model_label = models.CharField(_("model"), max_length=200)
    #: The selected keys as text (JSON has no UUIDs).
    keys = models.JSONField(_("keys"))
    kept_at = models.DateTimeField(_("kept at"))

    class Meta:
        verbose_name = _("rows selected for duplicate review")
        verbose_name_plural = _("rows selected for duplicate review")
        indexes = [models.Index(fields=["user_pk", "kept_at"], name="semantic_selection_user")]

    def __str__(self) -> str:
        return f"{self.model_label} ({len(self.keys)} rows)"


#: This app's models that name a row's model (``model_label``) and field (``field_name``)
#: as text, with their other columns that name a field of that model. Migrations keep
#: them in step (:mod:`semantic.migration_hooks`); ``semantic_remove_stale`` cleans up.
KEYED_BY_NAME: dict[str, tuple[str, ...]] = {
    "Passage": (),
    "EmbeddingFailure": (),
    "DismissedPair": (),
    "Classifier": ("label_field",),
    "EmbeddingBatchJob": (),
    "FieldSwitch": ("serving_field",),
    "FieldDefinition": (),
}
#: What nothing reads once its field is gone, even under a name a field switch keeps alive.
UNREAD_WITHOUT_FIELD = ("Passage", "EmbeddingFailure", "FieldDefinition")
