from django.contrib import admin

from semantic.admin import SemanticAdminMixin
from tests.testapp.models import Article, Entry, Report


@admin.register(Article)
class ArticleAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """Hides category "hidden", to show that semantic pages respect get_queryset()."""

    list_display = ["title", "category"]
    list_filter = ["category"]
    search_fields = ["title"]

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(category="hidden")


@admin.register(Report)
class ReportAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """A model keyed by UUID in the admin: find-similar, duplicate review and dismissing."""

    list_display = ["title"]


@admin.register(Entry)
class EntryAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """Keyed by text: Django's admin URLs carry such keys quoted ("item_40" as "item_5F40")."""

    list_display = ["code", "text"]
