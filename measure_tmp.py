import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django; django.setup()
from project.questions.models import Question
from project.questions.search import search
queries = sys.argv[1:]
for q in queries:
    meaning = list(Question.objects.similar_to(q).values_list("title", "similarity")[:6])
    hyb = list(search(q, 0.48).values_list("title", "similarity", "keyword_rank", "meaning_rank")[:6])
    print(f"\n=== {q}")
    print("  meaning:", *[f"\n    {s:.3f} {t}" for t, s in meaning])
    print("  hybrid: ", *[f"\n    {s:.3f} k={k} m={m} {t}" for t, s, k, m in hyb])
