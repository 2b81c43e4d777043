from django.contrib import admin

from project.questions.models import Question
from semantic.admin import SemanticAdminMixin


@admin.register(Question)
class QuestionAdmin(SemanticAdminMixin, admin.ModelAdmin):
    list_display = ["title", "category", "created"]
    list_filter = ["category"]
    search_fields = ["title", "body", "answer"]
    fields = ["title", "body", "category", "answer"]
    # A suggested-category column, a confident/unsure filter and "Apply suggested labels".
    # The question's own vector; the answer's passages are for search (models.py).
    semantic_field = "embedding"
    semantic_label_field = "category"
    semantic_topic_date_field = "created"
