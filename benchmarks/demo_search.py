"""The demo's search and category suggestions on its own data: what hybrid ranking changes.

For each query: the questions the search showed before (meaning only, at least the
minimum similarity) and the ones it shows now (project/questions/search.py: hybrid
ranking; shown when at least the minimum similarity or holding every word of the
query in the title or body), with the first of each and the passage of its answer the
page shows under it (``with_passage()``: its position among the answer's passages and
its similarity to the query). Then the category Ask
suggests for a few new questions, with its confidence and the similarity of the
nearest stored question (a did-you-mean above 0.53), and the suggestion each sample
question left without a category gets on its page, against the category of the
nearest labelled question (its paraphrase in the data).

Runs on the demo's own database, with the demo data loaded and embedded by the local
model, as `make demo` leaves it (or `manage.py migrate`, `load_demo_data`,
`semantic_embed`):

    .venv/bin/python -m benchmarks.demo_search
"""

from __future__ import annotations

import os
import sys

from benchmarks.common import BASE_DIR

QUERIES = [
    "429",
    "report",
    "Okta",
    "SAML",
    "invoice",
    "Android",
    "error",
    "password",
    "notifications",
    "I can't get into my account",
    "I was charged two times",
    "app keeps crashing on my phone",
    "purple elephants dancing",
    "zebra quantum harmonica",
]
NEW_QUESTIONS = [
    ("The VAT number is missing on my invoices", "Our accountant needs it on every invoice."),
    ("Can I pay with PayPal?", "Our company does not use credit cards."),
    ("How do I reset my two-factor authentication?", ""),
    ("The Android app freezes when I open a project", ""),
    ("Do you offer a discount for non-profits?", "We are a small charity and the price per seat is too high for us."),
]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from project.questions.categories import suggest, suggest_for
    from project.questions.models import Question
    from project.questions.relevance import thresholds
    from project.questions.search import search
    from semantic.models import Passage

    floor = thresholds().min_similarity
    print(f"minimum similarity {floor}; {Question.objects.filter(embedding__isnull=False).count()} questions embedded")
    print(
        "\n| query | shown before | shown now | first before (similarity) | first now (similarity, keyword rank) "
        "| its answer's passage shown (position of passages, similarity) |"
    )
    print("|---|---|---|---|---|---|")
    for query in QUERIES:
        before = list(
            Question.objects.similar_to(query, field="embedding", min_similarity=floor).values_list(
                "title", "similarity"
            )
        )
        now = list(
            search(query, floor).values_list(
                "title", "similarity", "keyword_rank", "passage_position", "passage_similarity", "pk"
            )
        )
        first_before = f"{before[0][0]} ({before[0][1]:.2f})" if before else "No good match"
        first_now = f"{now[0][0]} ({now[0][1]:.2f}, {now[0][2]})" if now else "No good match"
        passage = ""
        if now and now[0][3] is not None:
            answer = Passage.objects.filter(
                model_label=Question._meta.label, field_name="answer_embedding", object_pk=str(now[0][5])
            )
            passage = f"{now[0][3] + 1} of {answer.count()} ({now[0][4]:.2f})"
        print(f"| {query} | {len(before)} | {len(now)} | {first_before} | {first_now} | {passage} |")

    print("\n| new question | suggested | confidence | nearest stored question (similarity) |")
    print("|---|---|---|---|")
    for title, body in NEW_QUESTIONS:
        suggestion = suggest(title, body)
        nearest = (
            Question.objects.similar_to(f"{title}\n\n{body}", field="embedding")
            .values_list("title", "similarity")
            .first()
        )
        print(f"| {title} | {suggestion.name} | {suggestion.confidence:.2f} | {nearest[0]} ({nearest[1]:.2f}) |")

    print("\n| sample question without a category | suggested | confidence | nearest labelled question |")
    print("|---|---|---|---|")
    for question in Question.objects.filter(category="").order_by("pk"):
        suggestion = suggest_for(question)
        paraphrase = Question.objects.exclude(category="").similar_to(question, field="embedding").first()
        print(
            f"| {question.title} | {suggestion.name} | {suggestion.confidence:.2f} | "
            f"{paraphrase.get_category_display()} ({paraphrase.title}) |"
        )


if __name__ == "__main__":
    main()
