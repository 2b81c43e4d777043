from django.contrib import admin
from django.urls import include, path

from semantic.admin import EmbeddingFailureAdmin, SemanticAdminMixin
from semantic.models import EmbeddingFailure
from tests.testapp.models import Article, Note


class NoteAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """Registered only on ``other_site``, so no URL of the default ``admin`` site can serve it."""

    list_display = ["text"]
    search_fields = ["text"]


class LabelledArticleAdmin(SemanticAdminMixin, admin.ModelAdmin):
    """Suggested labels for a plain CharField (no choices, so no zero-shot to fall back on)."""

    list_display = ["title", "category"]
    semantic_label_field = "category"


#: A second admin site under another name, as projects with a custom AdminSite have.
other_site = admin.AdminSite(name="myadmin")
other_site.register(Note, NoteAdmin)
other_site.register(Article, LabelledArticleAdmin)
other_site.register(EmbeddingFailure, EmbeddingFailureAdmin)
#: A custom AdminSite as the README's admin snippet makes one: the model's admin only.
plain_site = admin.AdminSite(name="plainadmin")
plain_site.register(Note, NoteAdmin)

urlpatterns = [
    path("admin/", admin.site.urls),
    path("myadmin/", other_site.urls),
    path("plainadmin/", plain_site.urls),
    path("", include("project.questions.urls")),
]
