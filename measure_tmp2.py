import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django; django.setup()
from django.db import connection
from project.questions.models import Question
from semantic import suggest_label
for text in sys.argv[1:]:
    p = suggest_label(Question.objects.all(), text)
    print(f"{p.label:16} {p.confidence:.3f}  {text}")
