import time

from django.core.management.base import BaseCommand, CommandError
from django.db import router

from semantic import backfill, batch, rows
from semantic.backends import EmbeddingError
from semantic.conf import semantic_settings as conf
from semantic.management.output import QuietMixin
from semantic.management.targets import check_app_migrated, resolve_all
from semantic.schema import schema_problem
from semantic.switch import switch_to, switched_name


class Command(QuietMixin, BaseCommand):
    help = (
        "Embed the rows that need it: new, changed, stale (made by another model, task type or size) and failed "
        "ones whose retry time has come, for the named app_label.Model[.field] targets or every EmbeddingField. "
        "Runs inline with a progress display, hands the work to django-q2 workers with --queue, or sends "
        "Gemini Batch API jobs with --batch-api. Safe to interrupt: finished batches are kept, and running it again "
        "carries on. With --switch, fills a field declared with replaces= and then points queries at it. "
        "Tells you when a migration is due (e.g. the field's dimensions changed)."
    )

    NOTHING = "{label}: nothing to embed."
    ORPHANS_DROPPED = "{label}: removed {records} failure record(s) of rows deleted since (outside the ORM)."
    HELD = (
        "{label}: {rows} rows are left to open Batch API job(s) {names}; run `manage.py semantic_embed "
        "{label} --batch-api` to collect them (or --batch-job NAME for one)."
    )
    DRY_RUN = "{label}: {rows} rows, {characters} characters (about {tokens} tokens){cost}."
    DRY_RUN_PASSAGES = (
        "{label}: of those, {passages} passages of {rows} rows, {characters} characters "
        "(passages whose text already has a vector are not sent)."
    )
    #: Said as the run's summary says it ("without text"), so the two can be compared.
    DRY_RUN_WITHOUT_TEXT = (
        "{label}: {rows} rows without text are left out: nothing is sent for them, "
        "and a run removes any vector they had."
    )
    COST = ", estimated cost USD {cost:.4f} at {price} per million tokens"
    FREE = ", free: local model"
    QUEUED = "{label}: queued {rows} rows as {tasks} django-q2 tasks; run `manage.py qcluster` to process them."
    DONE = (
        "{label}: {embedded} embedded, {cleared} without text, {failed} failed, "
        "{changed} changed while in flight, {requests} requests."
    )
    #: A passage that is its row's whole text takes the row's vector: reused, not kept from before.
    PASSAGES = (
        "{label}: passages of {rows} rows stored: {embedded} embedded, {from_row} reused their row's vector "
        "(a text of one passage), {kept} kept from before, {failed} failed."
    )
    PROGRESS = "{label}: {visited}/{total} rows, {rate:.1f} rows/s, about {eta} left"
    #: Rows a run leaves out, --all too: their last attempt failed and they wait to be retried.
    WAITING = (
        "{label}: {rows} rows whose embedding failed are left to their retry{when}; "
        "`manage.py semantic_embed {label} --failed` retries them now."
    )
    WAITING_UNTIL = " (the next at {time}; rows the API refused wait for their text to change)"
    WAITING_FOR_TEXT = " (the API refused their text: they wait for it to change)"
    FAILED_HINT = "Failed rows are listed in the admin (Embedding failures); retry them with --failed."
    STOPPED = "{label}: stopped before the end: {reason} The rows left are still pending; run this again once fixed."
    #: The command's last word (and exit status 1) when a run stopped: scripts and cron jobs see it.
    INCOMPLETE = "Not finished: {labels} stopped before the end (see above)."
    #: The last word (and exit status 1) when rows or passages failed in a way a retry may cure (an API
    #: outage, a database error), also when --failed retried them in vain.
    SOME_FAILED = "Embedding failed for {rows} row(s) or passage(s) of {labels} (see above)."
    #: Said, without exit status 1, of texts the API refused for good: no rerun cures them, and a
    #: script that alerted or retried on them would do so on every run (a --switch that was made, too).
    REFUSED = (
        "The API refused the text of {rows} row(s) or passage(s) of {labels} for good; the run does not fail "
        "for them. They are listed in the admin (Embedding failures, permanent) and counted as failed by "
        "`manage.py semantic_status`; change their text (they are then embedded again) or delete them."
    )
    STALE = (
        "{label}: {rows} rows hold vectors made with another {changed} than now; until they are re-embedded, "
        "search sees only the rows embedded by {spec}. To change the model with no gap, add a second field with "
        "replaces= and switch with --switch (README: Changing the model)."
    )
    REHASHED = (
        "{label}: the text of {rows} rows read again in Python; {changed} differ from the text their vector "
        "was made from."
    )
    HASHED_IN_SQL = "{label}: its text comes from columns, which PostgreSQL hashes itself; nothing to re-hash."
    REHASH_DRY_RUN = "--rehash stores the rows' new text hashes; it does not go with --dry-run."
    SWITCHED = "Queries for {model}.{original} now use {field} ({spec})."
    SWITCHED_WITHOUT = (
        "{label}: {rows} rows are left out of its search: the API rejected their text for good (primary keys "
        "{pks}). Change their text (they are then embedded again) or delete them; they are listed in the admin "
        "(Embedding failures). Retrying them with --failed sends the same text and fails the same way."
    )
    SWITCH_ONE = "--switch takes exactly one app_label.Model.field."
    RESUME_HINT = "Interrupted; batches already written are kept. Run the command again (without --all) to carry on."
    BATCH_SUBMITTED = "{label}: submitted Batch API job {name} with {rows} rows."
    BATCH_PASSAGES_SUBMITTED = "{label}: submitted Batch API job {name} with {rows} passages."
    BATCH_RESUMING = "{label}: collecting Batch API job {name} ({rows} {unit}, submitted {submitted})."
    BATCH_WAITING = "{label}: job {name} is {state} after {waited:.0f}s."
    BATCH_DONE = "{label}: job {name} {state}: {embedded} embedded, {failed} failed, {changed} changed while in flight."
    BATCH_PASSAGES_DONE = (
        "{label}: job {name} {state}: {embedded} passages embedded, {rows} rows' passages stored, {failed} passages "
        "failed, {changed} rows changed while in flight."
    )
    BATCH_FAILED = (
        "{label}: job {name} ended {state} ({error}); its {rows} rows are still pending. Run the command "
        "again to submit them again, or without --batch-api to embed them now."
    )
    BATCH_STOPPED = (
        "Stopped waiting. Batch API job(s) {names} keep running at Google and their rows are left to them; "
        "run the same command again, or with --batch-job NAME, to collect the results."
    )

    def add_arguments(self, parser):
        parser.add_argument("targets", nargs="*", help="app_label.Model or app_label.Model.field (default: all)")
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--all",
            action="store_true",
            dest="everything",
            help="re-embed every row, even current ones (not rows waiting to retry a failure: --failed takes those)",
        )
        which.add_argument("--failed", action="store_true", help="only retry rows whose embedding failed")
        which.add_argument(
            "--rehash",
            action="store_true",
            help="first read every row's text from methods/properties in source again (no API calls), so the "
            "run embeds the rows whose text changed: run it after changing the code of such a method",
        )
        parser.add_argument(
            "--batch-size", type=int, metavar="N", help="rows per API request (default: the backend's cap)"
        )
        parser.add_argument(
            "--limit",
            type=int,
            metavar="N",
            help="stop after this many rows (with --all: re-embed the first N rows by primary key, no others)",
        )
        parser.add_argument("--queue", action="store_true", help="hand the rows to django-q2 workers instead")
        parser.add_argument("--dry-run", action="store_true", help="count rows, characters and cost; change nothing")
        parser.add_argument(
            "--batch-api",
            action="store_true",
            help="send the rows as Gemini Batch API jobs (half the price; results can take hours), wait for "
            "them and write the results; a rerun collects jobs a stopped run left open",
        )
        parser.add_argument("--batch-job", metavar="NAME", help="collect this Batch API job (implies --batch-api)")
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="seconds between Batch API job checks (default 30)",
        )
        parser.add_argument(
            "--switch",
            action="store_true",
            help="embed the named field fully, then make queries for the field it replaces use it "
            "(a field declared with replaces=; name the original field to switch back)",
        )

    def handle(self, targets, everything, failed, batch_size, limit, queue, dry_run, switch, rehash, **options):
        batch_api = options["batch_api"] or bool(options["batch_job"])
        if rehash and dry_run:
            raise CommandError(self.REHASH_DRY_RUN)
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be a positive number.")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be a positive number.")
        if options["poll_interval"] <= 0:
            raise CommandError("--poll-interval must be a positive number of seconds.")
        if switch and (queue or dry_run):
            raise CommandError("--switch embeds inline and then switches; it does not go with --queue or --dry-run.")
        if batch_api and (queue or failed):
            raise CommandError("--batch-api runs the jobs from this command; it does not go with --queue or --failed.")
        resolved = resolve_all(targets, note=self.stderr.write)
        if targets and not resolved:
            return  # the rows are in other schemas than this one (schemas per tenant): the note says which
        if switch and (len(resolved) != 1 or len(targets[0].split(".")) != 3):
            raise CommandError(self.SWITCH_ONE)
        if switch:
            try:
                switched_name(*resolved[0])  # refused now, not after embedding every row
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        if batch_api:
            for model, field in resolved:
                try:
                    batch.check(model, field)
                except ValueError as exc:
                    raise CommandError(str(exc)) from None
        check_app_migrated(resolved)
        stopped: list[str] = []
        self.failed: dict[str, int] = {}  # label: rows and passages that failed, a retry may cure them
        self.refused: dict[str, int] = {}  # label: rows and passages whose text the API refused for good
        try:
            for model, field in resolved:
                label = f"{model._meta.label}.{field.name}"
                if problem := schema_problem(field):
                    # The other fields' rows are still embedded; the command fails at the end.
                    self.stderr.write(problem)
                    stopped.append(label)
                    continue
                if rehash:
                    self.rehash(model, field, label)
                kwargs = {"everything": everything, "failed": failed}
                using = backfill.database(field)  # never a replica that lags: what the run embeds is there
                stale = rows.stale_rows(model, field, using).count()
                if stale and field.backend.setup_problem() is None:  # else the rows wait for a setting, not a model
                    changed = " or ".join(rows.stale_settings(model, field, using))
                    self.stderr.write(self.STALE.format(label=label, rows=stale, changed=changed, spec=field.spec()))
                if not batch_api:
                    self.report_held(field, label, using)
                if failed and not dry_run and (dropped := rows.sweep_orphan_failures(field, using)):
                    # Else listed and retried, and skipped, on every run, as the sweep drops them.
                    self.say(self.ORPHANS_DROPPED.format(label=label, records=dropped))
                if dry_run:
                    self.report_plan(label, field, backfill.plan(model, field, limit=limit, **kwargs), batch_api)
                elif batch_api:
                    self.batch_api(
                        model, field, label, everything, limit, options["batch_job"], options["poll_interval"]
                    )
                elif queue:
                    total = backfill.count(model, field, limit=limit, **kwargs)
                    if not total:
                        self.say(self.NOTHING.format(label=label))
                        continue
                    tasks = backfill.hand_to_workers(model, field, batch_size=batch_size, limit=limit, **kwargs)
                    self.say(self.QUEUED.format(label=label, rows=total, tasks=tasks))
                else:
                    if self.embed(model, field, label, batch_size=batch_size, limit=limit, **kwargs):
                        stopped.append(label)
                if not failed and label not in self.failed and label not in self.refused:
                    self.report_waiting(field, label, using)
                if switch:
                    self.switch(model, field)
        except KeyboardInterrupt:
            self.stderr.write("\n" + self.RESUME_HINT)
            raise SystemExit(130) from None
        if self.refused:
            labels = ", ".join(self.refused)
            self.stderr.write(self.REFUSED.format(rows=sum(self.refused.values()), labels=labels))
        if stopped:
            raise CommandError(self.INCOMPLETE.format(labels=", ".join(stopped)))
        if self.failed:
            labels = ", ".join(self.failed)
            raise CommandError(self.SOME_FAILED.format(rows=sum(self.failed.values()), labels=labels))

    def rehash(self, model, field, label):
        if not field.text_from_python():
            self.say(self.HASHED_IN_SQL.format(label=label))
            return
        rows, changed = backfill.rehash(model, field)
        self.say(self.REHASHED.format(label=label, rows=rows, changed=changed))

    def switch(self, model, field):
        try:
            switched = switch_to(model, field)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        label = model._meta.label
        self.say(self.SWITCHED.format(model=label, original=switched.original, field=field.name, spec=field.spec()))
        if switched.rejected:
            shown = ", ".join(str(pk) for pk in switched.rejected[:20])
            pks = shown if len(switched.rejected) <= 20 else f"{shown}, ..."
            left_out = self.SWITCHED_WITHOUT.format(label=f"{label}.{field.name}", rows=len(switched.rejected), pks=pks)
            self.stderr.write(left_out)
            self.refused.pop(f"{label}.{field.name}", None)  # said above, with their primary keys

    def report_held(self, field, label, using):
        """Say which rows an open Batch API job holds: no run without --batch-api takes them."""
        jobs = list(batch.open_jobs(field.model, field, passages=False, using=using).values_list("name", "rows"))
        if jobs:
            names = ", ".join(name for name, _ in jobs)
            self.stderr.write(self.HELD.format(label=label, rows=sum(rows for _, rows in jobs), names=names))

    def report_waiting(self, field, label, using):
        count, retry_at = rows.waiting_failures(field.model, field, using)
        if count:
            when = self.WAITING_UNTIL.format(time=batch.shown_time(retry_at)) if retry_at else self.WAITING_FOR_TEXT
            self.stderr.write(self.WAITING.format(label=label, rows=count, when=when))

    def report_plan(self, label, field, plan, batch_api):
        cost = ""
        backend = field.backend
        if backend.name == "gemini":
            price = conf.PRICE_PER_MILLION_TOKENS or backfill.PRICE_PER_MILLION_TOKENS
            if batch_api:
                price *= batch.PRICE_FACTOR
            cost = self.COST.format(cost=plan.tokens * price / 1e6, price=price)
        elif backend.name == "local":
            cost = self.FREE
        self.say(
            self.DRY_RUN.format(label=label, rows=plan.rows, characters=plan.characters, tokens=plan.tokens, cost=cost)
        )
        if field.passages:
            passages = self.DRY_RUN_PASSAGES.format(
                label=label, passages=plan.passages, rows=plan.passage_rows, characters=plan.passage_characters
            )
            self.say(passages)
        if plan.without_text:
            self.say(self.DRY_RUN_WITHOUT_TEXT.format(label=label, rows=plan.without_text))

    def embed(self, model, field, label, **kwargs):
        total = backfill.count(
            model, field, everything=kwargs["everything"], failed=kwargs["failed"], limit=kwargs["limit"]
        )
        if not total:
            self.say(self.NOTHING.format(label=label))
            return
        started = time.monotonic()
        last_line = [0.0]
        tty = hasattr(self.stdout, "isatty") and self.stdout.isatty()

        def progress(outcome, visited):
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = visited / elapsed
            eta = time.strftime("%H:%M:%S", time.gmtime(max(total - visited, 0) / rate)) if rate else "?"
            line = self.PROGRESS.format(label=label, visited=visited, total=total, rate=rate, eta=eta)
            if tty:
                width = 30
                done = int(width * min(visited / total, 1))
                self.say(f"\r[{'#' * done}{'.' * (width - done)}] {line}", ending="")
                self.stdout.flush()
            elif time.monotonic() - last_line[0] >= 5 or visited >= total:
                last_line[0] = time.monotonic()
                self.say(line)

        outcome = backfill.embed_now(model, field, on_batch=progress, **kwargs)
        if tty:
            self.say("")
        self.say(
            self.DONE.format(
                label=label,
                embedded=outcome.embedded,
                cleared=outcome.cleared,
                failed=outcome.failed,
                changed=outcome.changed_in_flight,
                requests=outcome.requests,
            )
        )
        if field.passages:
            self.say(
                self.PASSAGES.format(
                    label=label,
                    rows=outcome.passage_rows,
                    embedded=outcome.passages,
                    from_row=outcome.passages_from_row,
                    kept=outcome.passages_reused,
                    failed=outcome.passages_failed,
                )
            )
        if outcome.stopped:
            self.stderr.write(self.STOPPED.format(label=label, reason=outcome.stopped))
        self.count_failures(label, outcome.failed + outcome.passages_failed, outcome.refused)
        return outcome.stopped

    def count_failures(self, label, failed, refused):
        """Note ``failed`` rows or passages, ``refused`` of them for good: only the others fail the command."""
        if failed > refused:
            self.stderr.write(self.FAILED_HINT)
            self.failed[label] = self.failed.get(label, 0) + failed - refused
        if refused:
            self.refused[label] = self.refused.get(label, 0) + refused

    def batch_api(self, model, field, label, everything, limit, job_name, poll_interval):
        last_wait = [0.0]

        def report(kind, job, waited=0.0, status=None, outcome=None):
            if kind == "resumed":
                unit = "passages" if job.passages else "rows"
                line = self.BATCH_RESUMING.format(
                    label=label, name=job.name, rows=job.rows, unit=unit, submitted=batch.shown_time(job.submitted_at)
                )
                self.say(line)
            elif kind == "submitted":
                submitted = self.BATCH_PASSAGES_SUBMITTED if job.passages else self.BATCH_SUBMITTED
                self.say(submitted.format(label=label, name=job.name, rows=job.rows))
            elif kind == "waiting" and (not last_wait[0] or time.monotonic() - last_wait[0] >= 60):
                last_wait[0] = time.monotonic()
                self.say(self.BATCH_WAITING.format(label=label, name=job.name, state=job.state, waited=waited))
            elif kind == "finished" and (job.error or not status.succeeded):
                error = job.error or "no reason given"
                self.stderr.write(
                    self.BATCH_FAILED.format(label=label, name=job.name, state=status.state, error=error, rows=job.rows)
                )
            elif kind == "finished":
                # The job holds what its collection wrote: vectors of rows, or of passages.
                done = self.BATCH_PASSAGES_DONE if job.passages else self.BATCH_DONE
                line = done.format(
                    label=label,
                    name=job.name,
                    state=status.state,
                    embedded=job.embedded,
                    rows=outcome.passage_rows,
                    failed=job.failed,
                    changed=outcome.changed_in_flight,
                )
                self.say(line)
                self.count_failures(label, job.failed, outcome.refused)

        try:
            finished = batch.run(
                model,
                field,
                everything=everything,
                limit=limit,
                job_name=job_name,
                poll_interval=poll_interval,
                on_event=report,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except EmbeddingError as exc:
            raise CommandError(f"{label}: {exc}") from None
        except KeyboardInterrupt:
            jobs = batch.open_jobs(model, field, using=router.db_for_write(model))
            names = ", ".join(jobs.values_list("name", flat=True)) or "(none)"
            self.stderr.write("\n" + self.BATCH_STOPPED.format(names=names))
            raise SystemExit(130) from None
        if not finished:
            self.say(self.NOTHING.format(label=label))
