import json

from django.core.exceptions import FieldDoesNotExist
from django.core.management.base import BaseCommand, CommandError

from semantic.backends import EmbeddingError
from semantic.evaluate import (
    METHODS,
    coverage,
    default_methods,
    evaluate,
    load_qrels,
    load_queries,
    parse_weights,
    report_lines,
)
from semantic.hybrid import DEFAULT_K
from semantic.keyword import keyword_index
from semantic.management.output import OutputMixin
from semantic.management.targets import ready, resolve
from semantic.query import with_semantic_methods


class Command(OutputMixin, BaseCommand):
    help = (
        "Print nDCG@10, recall@100 and MRR@10 (as percentages) of meaning, keyword and hybrid search "
        "for queries with relevance judgements in BEIR's layout."
    )

    SUMMARY = "{queries} judged queries averaged, {rows} rows of {label}."
    #: As BEIR averages pytrec_eval's figures; said, since each lowers or leaves out queries.
    WITHOUT_RELEVANT = "Of those, without a judgement above 0 (each scores 0, as in pytrec_eval): {count}."
    WITHOUT_TEXT = "Judged query ids not in the queries file (left out, as in pytrec_eval): {count}."
    NO_ID_FIELD = "{label} has no field {name!r} for --id-field."
    #: The embedding API failing is one line saying so, as semantic_search says it, not a traceback.
    UNAVAILABLE = "Could not embed the queries: {error}"
    #: Keyword and hybrid search read the model's KeywordIndex; without one only meaning can be compared.
    SKIPPED = (
        "{label} has no KeywordIndex, so {methods} search were skipped; add a KeywordIndex to Meta.indexes "
        "(README: Keyword and meaning together) to compare them."
    )
    NO_KEYWORD_INDEX = (
        "{label} has no KeywordIndex, which {methods} search need: add one to Meta.indexes "
        "(README: Keyword and meaning together), or leave them out: --methods {others}."
    )

    def add_arguments(self, parser):
        parser.add_argument("target", help="app_label.Model or app_label.Model.field")
        parser.add_argument("--queries", required=True, help='queries.jsonl: one {"_id", "text"} a line')
        parser.add_argument("--qrels", required=True, help="qrels.tsv: query-id, corpus-id, score, with a header")
        parser.add_argument("--field", help="the EmbeddingField, if the model has several")
        parser.add_argument(
            "--id-field", default="pk", help="the column holding the judgements' corpus-id (default: the primary key)"
        )
        parser.add_argument("--k-rrf", type=float, default=DEFAULT_K, help=f"RRF's k (default {DEFAULT_K})")
        parser.add_argument("--weights", default="1,1", help="hybrid weights keyword,meaning (default 1,1)")
        parser.add_argument(
            "--methods",
            help=f"some of {','.join(METHODS)} (default: all the field has; passages need passages=True)",
        )
        parser.add_argument(
            "--format",
            choices=["text", "json"],
            default="text",
            help="json: one object with the counts and each method's figures as fractions (for scripts and CI)",
        )

    def handle(self, target, queries, qrels, field, id_field, k_rrf, weights, methods, format, **options):
        (model, embedding_field), *others = ready(resolve(target if field is None else f"{target}.{field}"))
        if others:
            raise CommandError(f"{model._meta.label} has several EmbeddingFields; pass --field.")
        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else default_methods(embedding_field)
        if not chosen or set(chosen) - set(METHODS):
            raise CommandError(f"--methods takes some of {', '.join(METHODS)}, not {methods!r}.")
        chosen = self.searchable(model, embedding_field, chosen, given=bool(methods))
        if id_field != "pk":
            try:
                model._meta.get_field(id_field)
            except FieldDoesNotExist:
                raise CommandError(self.NO_ID_FIELD.format(label=model._meta.label, name=id_field)) from None
        try:
            texts = load_queries(queries)
            judgements = load_qrels(qrels)
            weight_pair = parse_weights(weights)
            queryset = with_semantic_methods(model._default_manager.all())
            counts = coverage(texts, judgements)
            rows = queryset.count()
            if format == "text":
                self.stdout.write(self.SUMMARY.format(queries=counts["averaged"], rows=rows, label=model._meta.label))
                if counts["without_relevant"]:
                    self.stdout.write(self.WITHOUT_RELEVANT.format(count=counts["without_relevant"]))
                if counts["without_text"]:
                    self.stdout.write(self.WITHOUT_TEXT.format(count=counts["without_text"]))
            results = evaluate(
                queryset,
                texts,
                judgements,
                field=embedding_field.name,
                id_field=id_field,
                k=k_rrf,
                weights=weight_pair,
                methods=chosen,
            )
        except EmbeddingError as error:
            raise CommandError(self.UNAVAILABLE.format(error=error)) from None
        except (OSError, ValueError) as error:
            raise CommandError(str(error)) from None
        if format == "json":
            report = {"model": model._meta.label, "field": embedding_field.name, "rows": rows, **counts}
            self.stdout.write(json.dumps({**report, "methods": results}, indent=2))
            return
        for line in report_lines(results):
            self.stdout.write(line)

    def searchable(self, model, embedding_field, chosen, *, given):
        """The methods the model can run: without a KeywordIndex, the default drops keyword
        and hybrid search, saying so, and methods asked for by name are refused."""
        if keyword_index(model) is not None:
            return chosen
        needing = [m for m in chosen if "keyword" in m or "hybrid" in m]
        if not needing:
            return chosen
        label = model._meta.label
        others = [m for m in chosen if m not in needing] or ["meaning"]
        if given:
            raise CommandError(
                self.NO_KEYWORD_INDEX.format(label=label, methods=" and ".join(needing), others=",".join(others))
            )
        self.stderr.write(self.SKIPPED.format(label=label, methods=" and ".join(needing)))
        return others
