import time

from django.core.management.base import BaseCommand, CommandError
from django.db import router, transaction

from semantic.backends import EmbeddingError
from semantic.classify import DEFAULT_K, METHODS, apply_predictions, predict_labels, unlabelled
from semantic.linear import classifier_model, train_classifier
from semantic.management.output import QuietMixin
from semantic.management.targets import ready, resolve


def confidence_type(value):
    import argparse

    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..1")
    return number


class Command(QuietMixin, BaseCommand):
    help = (
        "Label the unlabelled rows of a model from the rows people labelled (nearest neighbours, or a "
        "logistic regression with --method linear; zero-shot from the field's choices while nothing is labelled)."
    )

    TRAINED = "Trained a logistic regression on {rows} labelled rows ({labels} labels)."
    TRAINED_DRY = (
        "Trained a logistic regression on {rows} labelled rows ({labels} labels) for this dry run; "
        "the stored one is unchanged."
    )
    NOTHING = "No unlabelled rows with a vector in {label}."
    PROGRESS = "{label}: {done}/{total} rows predicted"
    WOULD_APPLY = "Dry run: {applied} of {rows} unlabelled rows would be labelled (confidence >= {confidence})."
    APPLIED = "Labelled {applied} of {rows} unlabelled rows (confidence >= {confidence})."
    SEVERAL_FIELDS = "{label} has several EmbeddingFields; name one: {target}.<field>."
    #: Zero-shot labelling embeds the choices' names; every prediction is made before any label is written.
    UNAVAILABLE = "Could not suggest labels for {label}, so nothing was labelled: {error}"

    def add_arguments(self, parser):
        parser.add_argument("target", help="app_label.Model or app_label.Model.field")
        parser.add_argument("--label", default="category", help="the field holding labels (default: category)")
        parser.add_argument("--method", choices=METHODS, default="knn")
        parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours that vote (default {DEFAULT_K})")
        parser.add_argument(
            "--min-confidence", type=confidence_type, default=0.0, help="apply only labels this sure, 0 to 1"
        )
        parser.add_argument("--dry-run", action="store_true", help="count what would be labelled, write nothing")
        parser.add_argument("--train", action="store_true", help="(re)train the logistic regression first")

    def handle(self, target, label, method, k, min_confidence, dry_run, train, **options):
        (model, field), *others = ready(resolve(target))
        if others:
            raise CommandError(self.SEVERAL_FIELDS.format(label=model._meta.label, target=target))
        if not dry_run:
            return self.classify(model, field, label, method, k, min_confidence, dry_run, train)
        # Training (asked for, or the linear method's first use) stores a classifier:
        # a dry run writes it only for as long as it predicts.
        with transaction.atomic(using=router.db_for_write(classifier_model())):
            self.classify(model, field, label, method, k, min_confidence, dry_run, train)
            transaction.set_rollback(True)

    def classify(self, model, field, label, method, k, min_confidence, dry_run, train):
        try:
            if train:
                classifier = train_classifier(model, label, field=field.name)
                trained = self.TRAINED_DRY if dry_run else self.TRAINED
                self.say(trained.format(rows=classifier.rows, labels=len(classifier.classes)))
            rows = unlabelled(model._default_manager.all(), label, field=field.name)
            total = rows.count()
            if not total:
                self.say(self.NOTHING.format(label=model._meta.label))
                return
            predictions = predict_labels(model._default_manager.all(), label, field=field.name, method=method, k=k)
            tracked = self.progress(predictions, total, model._meta.label)
            if dry_run:
                applied = sum(1 for p in tracked if p.confidence >= min_confidence)
            else:
                applied = apply_predictions(tracked, model, label, min_confidence=min_confidence)
        except EmbeddingError as error:
            raise CommandError(self.UNAVAILABLE.format(label=model._meta.label, error=error)) from None
        except ValueError as error:
            raise CommandError(str(error)) from None
        message = self.WOULD_APPLY if dry_run else self.APPLIED
        self.say(message.format(applied=applied, rows=total, confidence=min_confidence))

    def progress(self, predictions, total, label):
        """Pass the predictions through, drawing a bar on a terminal (a line every 5 s otherwise)."""
        tty = hasattr(self.stdout, "isatty") and self.stdout.isatty()
        last_line = time.monotonic()
        done = 0
        for prediction in predictions:
            yield prediction
            done += 1
            if tty and (done % 100 == 0 or done == total):
                width = 30
                filled = int(width * min(done / total, 1))
                line = self.PROGRESS.format(label=label, done=done, total=total)
                self.say(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}", ending="")
                self.stdout.flush()
            elif not tty and time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                self.say(self.PROGRESS.format(label=label, done=done, total=total))
        if tty:
            self.say("")
