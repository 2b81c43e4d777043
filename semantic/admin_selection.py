"""Rows selected in the admin, kept in the user's session and named in links by a short token.

"Find duplicates among selected" once carried every selected key in its link: 450
six-digit keys passed gunicorn's default request-line limit (4,094 bytes), and
UUID keys pass nginx's 8 KB header buffer at about 200 rows. A token keeps the
review's links, forms and reloads short whatever the selection's size.

The session, not the cache: a selection belongs to one user and must last as long
as they review it, across the server's processes (a local-memory cache is one per
process). Django's admin needs sessions, so every admin site has one.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db import models
from django.http import HttpRequest

#: The session key holding selections, ``{token: {"model": label, "ids": [...]}}``, oldest first.
SESSION_KEY = "semantic_selections"
#: Selections a session keeps, the newest; a link to an older one finds nothing.
KEPT = 10


def keep_selection(request: HttpRequest, model: type[models.Model], pks: list[Any]) -> str:
    """Keep the selected keys in the session; returns the token that names them.

    The token is a digest of the model and the keys, so selecting the same rows again
    reuses it (and moves it to the newest) instead of keeping a copy.
    """
    label = model._meta.label
    ids = [str(pk) for pk in pks]  # the session is JSON: UUIDs and other keys as text
    token = hashlib.blake2b(repr((label, ids)).encode(), digest_size=8).hexdigest()
    kept = dict(request.session.get(SESSION_KEY, {}))
    kept.pop(token, None)
    kept[token] = {"model": label, "ids": ids}
    request.session[SESSION_KEY] = dict(list(kept.items())[-KEPT:])
    return token


def kept_selection(request: HttpRequest, model: type[models.Model], token: str) -> list[str] | None:
    """The keys (as text) a token names, or None when this session does not hold them (any more)."""
    found = request.session.get(SESSION_KEY, {}).get(token)
    if not isinstance(found, dict) or found.get("model") != model._meta.label:
        return None
    return found["ids"]
