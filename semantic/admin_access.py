"""Which rows of a model a user may see, or change, through an admin site's pages of this app.

The status page, the list of embedding failures and the list of pairs marked "not a
duplicate" report on other models' rows. Each asks :func:`site_rows` which of them this
user may see, so that the three cannot disagree: a list that hides a model's records
from a user who may undo them, or shows them to one who may not, is a leak or a dead end.
"""

from __future__ import annotations

from typing import Literal

from django.contrib import admin
from django.db import models
from django.http import HttpRequest


def site_rows(
    site: admin.AdminSite, request: HttpRequest, model: type[models.Model], action: Literal["view", "change"]
) -> models.QuerySet | None:
    """The rows of ``model`` this user may ``"view"`` or ``"change"`` on ``site``; None for none.

    The model's ModelAdmin on ``site`` decides, as on its own pages: its
    ``has_view_permission()`` / ``has_change_permission()``, then (a SemanticAdminMixin's)
    ``has_semantic_view_permission()`` / ``has_semantic_change_permission()``, which take this
    app's pages of the model away; the rows are its ``get_queryset()``. A model without a
    ModelAdmin on ``site`` (one on a project's own AdminSite) is here for superusers only,
    every row of it, never through Django's model permissions: a staff user's ModelAdmin on
    another site may admit fewer rows, and a URL under this site's prefix must not show more.
    """
    model_admin = site._registry.get(model)
    if model_admin is None:
        return model._base_manager.all() if request.user.is_superuser else None
    allowed = getattr(model_admin, f"has_{action}_permission")(request)
    semantic = getattr(model_admin, f"has_semantic_{action}_permission", None)
    if allowed and semantic is not None:
        allowed = semantic(request)
    return model_admin.get_queryset(request) if allowed else None
