"""A cheap guess whether a search query is English.

The local model (all-MiniLM-L6-v2) was trained on English: a query in Spanish, German
or French finds little, and the page should say why. The guess is deliberately simple
and errs towards "English" so the note is never in the way of English queries:

- more than 10% of its letters outside ASCII (é, ñ, ü, ß, Cyrillic, CJK ...), or
- at least one common Spanish, German or French word and no common English word.
"""

from __future__ import annotations

import re

ENGLISH = frozenset(
    "the a an is are was do does how what why can i my to of in on for with not it and or be this".split()
)
OTHERS = frozenset(
    (
        "el la los las es son cómo como qué que por para mi mis con una uno del se puedo "
        "der das ist sind wie warum ich mein meine nicht mit und ein eine kann "
        "le les est sont comment pourquoi je mon ma mes avec une des ne pas peux du"
    ).split()
)
_WORD = re.compile(r"[^\W\d_]+")


def looks_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True
    if sum(not c.isascii() for c in letters) / len(letters) > 0.1:
        return False
    words = {w.lower() for w in _WORD.findall(text)}
    return not (words & OTHERS) or bool(words & ENGLISH)
