"""What commands print: users' text made safe for a terminal or a spreadsheet, and
reports that ``-v 0`` silences.

Titles and texts come from whoever wrote the rows. Printed raw, an escape sequence in
one can clear the screen, set the window title or rewrite what was printed before it;
in a CSV file, a cell that starts with ``=`` is a formula to a spreadsheet
(``=HYPERLINK(...)`` and worse: "CSV injection").
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, NoReturn

from django.core.serializers.json import DjangoJSONEncoder

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


def json_export(records: Any) -> str:
    """An export's JSON text: keys and dates as Django's serializers write them (a UUID key
    as its string), the text exactly as stored (:func:`json_safe`)."""
    return json_safe(json.dumps(records, ensure_ascii=False, indent=2, cls=DjangoJSONEncoder)) + "\n"


#: The exit status of a command whose reader closed the pipe (``| head -1``): a shell's for SIGPIPE.
CLOSED_PIPE = 128 + 13


class _ReaderGone(BrokenPipeError):
    """Standard output's reader closed the pipe (``| head -1``, ``| grep -q``): a
    ``BrokenPipeError`` to code that calls a command with ``call_command()``."""


class _Stdout:
    """A command's standard output: text the stream's encoding cannot hold is written as
    ``\\xNN`` rather than raising, and a closed pipe is told from other broken pipes
    (a socket to the API or the database)."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)

    def write(self, text: str) -> Any:
        encoding = getattr(self._out, "encoding", None)
        if encoding:
            text = text.encode(encoding, "backslashreplace").decode(encoding)
        try:
            return self._out.write(text)
        except BrokenPipeError:
            raise _ReaderGone from None

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            raise _ReaderGone from None

    def export(self, text: str) -> None:
        """Write an export (CSV, JSON) as UTF-8, as ``--output`` writes it, when standard
        output goes to a file or a pipe; a terminal gets it in its own encoding."""
        buffer = getattr(self._out, "buffer", None)
        if buffer is None or self._out.isatty():
            self.write(text)
            return
        self.flush()
        try:
            buffer.write(text.encode("utf-8"))
            buffer.flush()
        except BrokenPipeError:
            raise _ReaderGone from None


def reader_gone() -> NoReturn:
    """End a command whose standard output's reader closed the pipe: status 141, no traceback."""
    # Python flushes standard output once more on exit: into /dev/null, not the closed pipe.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(CLOSED_PIPE) from None


class OutputMixin:
    """For every command: its standard output writes what the stream cannot encode as
    ``\\xNN`` and exports as UTF-8 (:meth:`export`); a reader that stops early
    (``| head -1``) ends the command quietly with status 141, as it ends ``git log``;
    Ctrl-C prints one line and exits with status 130."""

    INTERRUPTED = "Interrupted."

    def execute(self, *args: Any, **options: Any) -> Any:
        out = options.get("stdout") or self.stdout._out  # type: ignore[attr-defined]
        options["stdout"] = out if isinstance(out, _Stdout) else _Stdout(out)
        return super().execute(*args, **options)  # type: ignore[misc]

    def run_from_argv(self, argv: list[str]) -> None:
        """From the command line only (``call_command()`` callers get the exceptions):
        a closed pipe exits 141 and Ctrl-C 130, each without a traceback."""
        try:
            super().run_from_argv(argv)  # type: ignore[misc]
        except _ReaderGone:
            reader_gone()
        except KeyboardInterrupt:
            self.stderr.write("\n" + self.INTERRUPTED)  # type: ignore[attr-defined]
            raise SystemExit(130) from None
        try:
            # What is still buffered is written now, while a closed pipe can be told from other
            # errors, not by Python on exit ("Exception ignored ... BrokenPipeError", status 120).
            sys.stdout.flush()
        except BrokenPipeError:
            reader_gone()

    def write_export(self, text: str) -> None:
        """Write an export's text to standard output (UTF-8 to a file or a pipe)."""
        out = self.stdout._out  # type: ignore[attr-defined]
        if isinstance(out, _Stdout):
            out.export(text)
        else:  # handle() called directly, without execute()
            self.stdout.write(text, ending="")  # type: ignore[attr-defined]


class QuietMixin(OutputMixin):
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
