from django.contrib import admin

from semantic.admin import SemanticAdminMixin
from tests.topicapp.models import Request, Ticket


@admin.register(Ticket)
class TicketAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """Suggested labels for the category; Topics grow by the ``created`` date (found on its own)."""

    list_display = ["text", "category"]
    list_filter = ["category"]
    search_fields = ["text"]
    semantic_label_field = "category"


@admin.register(Request)
class RequestAdmin(SemanticAdminMixin, admin.ModelAdmin):
    list_display = ["text", "queue"]
    semantic_label_field = "queue"
