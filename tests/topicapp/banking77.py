"""Real Banking77 sentences for the tests, read from the shared data directory.

The data is not copied into the repository (CC BY 4.0, 10,003 rows). It is looked for
at ``$BANKING77_CSV``, else in ``../shared/data`` beside the checkout, as CI lays it out:
a checkout elsewhere sets the variable. Tests that need it are
skipped, saying where it was looked for, when it is absent.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

TRAIN_CSV = Path(
    os.environ.get("BANKING77_CSV")
    or Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "train.csv"
)

#: Intents whose messages no reader would confuse.
INTENTS = ["card_arrival", "exchange_rate", "passcode_forgotten", "lost_or_stolen_phone", "terminate_account"]


def sentences(intents: list[str] = INTENTS, per_intent: int = 15) -> dict[str, list[str]]:
    """The first ``per_intent`` messages of each intent, in file order."""
    if not TRAIN_CSV.exists():
        pytest.skip(
            f"Banking77 is not at {TRAIN_CSV}: set BANKING77_CSV to its train.csv"
            " (see ../shared/data/banking77/README.md)"
        )
    found: dict[str, list[str]] = {intent: [] for intent in intents}
    with TRAIN_CSV.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            texts = found.get(row["category"])
            if texts is not None and len(texts) < per_intent:
                texts.append(row["text"].strip())
    return found
