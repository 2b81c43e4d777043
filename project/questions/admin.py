from django.contrib import admin

from project.questions.models import Question
from semantic.admin import SemanticAdminMixin


@admin.register(Question)
class QuestionAdmin(SemanticAdminMixin, admin.ModelAdmin):
    list_display = ["title", "created"]
    search_fields = ["title", "body"]
