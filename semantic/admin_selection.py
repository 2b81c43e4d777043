"""Rows selected in the admin, kept in the database and named in links by a short token.

"Find duplicates among selected" once carried every selected key in its link: 450
six-digit keys passed gunicorn's default request-line limit (4,094 bytes), and
UUID keys pass nginx's 8 KB header buffer at about 200 rows. A token keeps the
review's links, forms and reloads short whatever the selection's size.

The database, not the session: with cookie sessions (``signed_cookies``) the session
is the cookie, and 120 UUID keys already pass the 4,096 bytes browsers keep of one;
they drop it without a word, and the review then finds its selection gone. Not the
cache either: a selection must last as long as its user reviews it, across the
server's processes (a local-memory cache is one per process).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from django.db import models
from django.http import HttpRequest
from django.utils import timezone

from semantic.models import ReviewSelection

#: Selections a user keeps, the newest; a link to an older one finds nothing.
KEPT = 10
#: What :func:`keep_selection` makes: ``blake2b(digest_size=8)`` in hex.
TOKEN = re.compile(r"[0-9a-f]{16}")


def keep_selection(request: HttpRequest, model: type[models.Model], pks: list[Any]) -> str:
    """Keep the selected keys for this user; returns the token that names them.

    The token is a digest of the user, the model and the keys, so selecting the same
    rows again reuses it (and makes it the newest) instead of keeping a copy.
    """
    user, label = str(request.user.pk), model._meta.label
    keys = [str(pk) for pk in pks]
    token = hashlib.blake2b(repr((user, label, keys)).encode(), digest_size=8).hexdigest()
    ReviewSelection.objects.update_or_create(
        token=token, defaults={"user_pk": user, "model_label": label, "keys": keys, "kept_at": timezone.now()}
    )
    mine = ReviewSelection.objects.filter(user_pk=user)
    older = list(mine.order_by("-kept_at", "-pk").values_list("pk", flat=True)[KEPT:])
    if older:
        mine.filter(pk__in=older).delete()
    return token


def kept_selection(request: HttpRequest, model: type[models.Model], token: str) -> list[str] | None:
    """The keys (as text) a token names, or None when this user has no such selection (any more).

    A token not shaped like :func:`keep_selection`'s (a garbled or hand-edited link) names
    none, and is never queried: PostgreSQL refuses text holding a NUL byte with an error.
    """
    if TOKEN.fullmatch(token) is None:
        return None
    found = ReviewSelection.objects.filter(
        token=token, user_pk=str(request.user.pk), model_label=model._meta.label
    ).first()
    return None if found is None else found.keys
