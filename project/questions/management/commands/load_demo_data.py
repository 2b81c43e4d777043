from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from project.questions.models import Question
from semantic.tasks import queue_pending

DATA = Path(__file__).resolve().parents[2] / "data"
#: One question a line: title, body and category (empty: left for the suggestions to fill), tab-separated.
QUESTIONS = DATA / "questions.tsv"
#: Each question's answer under a ``## <title>`` heading, paragraphs separated by blank lines.
ANSWERS = DATA / "answers.md"


def read_answers(path: Path = ANSWERS) -> dict[str, str]:
    """Answers by the title of the question they answer."""
    answers: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = answers.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return {title: "\n".join(lines).strip() for title, lines in answers.items()}


def read_questions(path: Path = QUESTIONS, answers: dict[str, str] | None = None) -> list[Question]:
    answers = read_answers() if answers is None else answers
    rows = [(line.split("\t") + ["", ""])[:3] for line in path.read_text().splitlines() if line.strip()]
    return [
        Question(title=title, body=body, category=category.strip(), answer=answers.get(title, ""))
        for title, body, category in rows
    ]


class Command(BaseCommand):
    help = "Create the demo admin user (admin/admin) and load the sample questions and their answers once."

    CREATED_ADMIN = "Created superuser admin / admin."
    ALREADY_LOADED = "Sample questions already loaded."
    LOADED = "Loaded {count} sample questions ({labelled} with a category); the worker embeds them now."
    UNANSWERED = "answers.md has answers for questions that questions.tsv does not hold: {titles}"

    def handle(self, *args, **options):
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write(self.CREATED_ADMIN)
        if Question.objects.exists():
            self.stdout.write(self.ALREADY_LOADED)
            return
        answers = read_answers()
        questions = read_questions(answers=answers)
        stray = sorted(set(answers) - {question.title for question in questions})
        if stray:
            raise CommandError(self.UNANSWERED.format(titles="; ".join(stray)))
        Question.objects.bulk_create(questions)
        queue_pending(Question)  # bulk_create sends no save signal
        labelled = sum(bool(question.category) for question in questions)
        self.stdout.write(self.LOADED.format(count=len(questions), labelled=labelled))
