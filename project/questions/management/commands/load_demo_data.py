from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from project.questions.models import Question
from semantic.tasks import queue_pending

DATA = Path(__file__).resolve().parents[2] / "data" / "questions.tsv"


class Command(BaseCommand):
    help = "Create the demo admin user (admin/admin) and load the sample questions once."

    def handle(self, *args, **options):
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write("Created superuser admin / admin.")
        if Question.objects.exists():
            self.stdout.write("Sample questions already loaded.")
            return
        rows = [line.split("\t", 1) for line in DATA.read_text().splitlines() if line.strip()]
        Question.objects.bulk_create(Question(title=title, body=body) for title, body in rows)
        queue_pending(Question)  # bulk_create sends no save signal
        self.stdout.write(f"Loaded {len(rows)} sample questions; the worker embeds them now.")
