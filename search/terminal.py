"""Lines that fit the terminal they are printed on.

A terminal wraps a line longer than its width wherever the width falls ("activatio" /
"n=sigmoid"); we wrap it first, at spaces, so a parameter (`key=value`, never a space inside)
or a word is never cut. Continuation lines are indented. A log file or a pipe is no terminal:
its lines stay whole, one record a line, for grep. Imports nothing heavy: the command line
prints its first line through here before torch and Optuna load.
"""
from __future__ import annotations

import os
import sys
import textwrap

DEFAULT_COLUMNS = 80   # a terminal that reports 0 columns (`script` without a size, CI runners)
DEFAULT_ROWS = 24      # and 0 rows
NARROWEST = 20         # below this, wrapping at words helps no one: wrap at 20 anyway
INDENT = 4             # continuation lines, so a wrapped line reads as one


def columns(out) -> int | None:
    """The width of the terminal `out` writes to, in characters; None when `out` is no
    terminal. A terminal without a size counts as DEFAULT_COLUMNS wide."""
    try:
        if not out.isatty():
            return None
        width = os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed or odd stream
        return None
    return width or DEFAULT_COLUMNS


def rows(out) -> int | None:
    """The terminal's height in lines; None when unknown (no terminal, or 0 reported)."""
    try:
        return os.get_terminal_size(out.fileno()).lines or None
    except (AttributeError, OSError, ValueError):
        return None


def fit(text: str, width: int | None, indent: int = INDENT) -> str:
    """`text` wrapped at spaces into lines of at most `width` characters (a word longer than
    a line is split, the only cut); unchanged when `width` is None (no terminal)."""
    if width is None or len(text) <= width:
        return text
    width = max(width, NARROWEST)
    return "\n".join("\n".join(textwrap.wrap(line, width, subsequent_indent=" " * indent,
                                             break_on_hyphens=False, break_long_words=True))
                     or line for line in text.split("\n"))


def say(out, text: str) -> None:
    """Print one line (or a few, wrapped to fit) to `out` and flush."""
    out = sys.stdout if out is None else out
    print(fit(text, columns(out)), file=out, flush=True)
