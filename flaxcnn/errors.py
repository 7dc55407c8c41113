"""Problems a user can fix, and the one-line `error: ...` / `warning: ...` messages they become.

Every tool of flaxcnn reports a problem as one line that says what to do: `UserError` carries it up
to the command line (train.py, `python -m flaxcnn.<tool>`), which prints `error_line(e)` and exits
non-zero; `warn` prints a warning and lets the work go on. `first_line` shortens a library's
exception (often many lines, sometimes empty) to the part worth quoting in such a line.
"""
from __future__ import annotations

import sys


class UserError(Exception):
    """A problem the user can fix; the message says what to do."""


def first_line(error: BaseException, *, limit: int = 200, with_type: bool = False) -> str:
    """The first non-empty line of `error`'s message (at most `limit` characters), or its type's
    name when the message is empty; with `with_type`, as 'TypeName: line'."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[0][:limit]
    return f"{type(error).__name__}: {line}" if with_type else line


def error_line(error: BaseException) -> str:
    """'error: <first line>' for the command line."""
    return f"error: {first_line(error, limit=2000)}"


def warn(message: str) -> None:
    """'warning: <message>' on stderr, at once."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
