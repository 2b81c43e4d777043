"""What commands print: users' text made safe for a terminal or a spreadsheet, and
reports that ``-v 0`` silences.

Titles and texts come from whoever wrote the rows. Printed raw, an escape sequence in
one can clear the screen, set the window title or rewrite what was printed before it;
in a CSV file, a cell that starts with ``=`` is a formula to a spreadsheet
(``=HYPERLINK(...)`` and worse: "CSV injection").
"""

from __future__ import annotations

import re
from typing import Any

#: C0 controls but newline, DEL, and C1 controls (0x9b is a one-character CSI on many terminals).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
#: What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def terminal_safe(text: str) -> str:
    """``text`` with every control character but newline shown as ``\\xNN``."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def spreadsheet_safe(value: Any) -> str:
    """A CSV cell that spreadsheets show as text: a formula's first character gets a leading ``'``.

    Numbers are left as they are: ``-0.5`` is a number to a spreadsheet, not a formula.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_row(record: dict[str, Any]) -> dict[str, str]:
    """A CSV row whose cells are safe to open in a spreadsheet and to print."""
    return {key: terminal_safe(spreadsheet_safe(value)) for key, value in record.items()}


def json_safe(document: str) -> str:
    """JSON text with DEL and C1 controls written as ``\\u00NN`` (``json`` escapes only C0).

    The same data, read back; only its printed form changes.
    """
    return re.sub(r"[\x7f-\x9f]", lambda match: f"\\u{ord(match.group()):04x}", document)


class QuietMixin:
    """For a command whose standard output only reports progress and outcomes: ``-v 0``
    (``call_command(..., verbosity=0)``) silences it, as it silences Django's own commands,
    so cron jobs and test runs stay quiet. Problems still go to standard error."""

    verbosity = 1

    def execute(self, *args: Any, **options: Any) -> Any:
        self.verbosity = options.get("verbosity", 1)
        return super().execute(*args, **options)  # type: ignore[misc]

    def say(self, line: str, ending: str | None = None) -> None:
        if self.verbosity:
            self.stdout.write(line, ending=ending)  # type: ignore[attr-defined]
