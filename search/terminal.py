"""Lines that fit the terminal they are printed on, and durations that read at a glance.

A terminal wraps a line longer than its width wherever the width falls ("activatio" /
"n=sigmoid"); we wrap it first, at spaces, so a parameter (`key=value`, never a space inside)
or a word is never cut, nor a number parted from its unit ("1.3 s", "~20 min", "185 MB").
Continuation lines are indented. A log file or a pipe is no terminal: its lines stay whole,
one record a line, for grep. A long wait's note (a first decode) is one row that the next
line replaces. Imports nothing heavy: the command line prints its first line through here
before torch and Optuna load.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import textwrap
from typing import Callable, Iterator

DEFAULT_COLUMNS = 80   # a terminal that reports 0 columns (`script` without a size, CI runners)
DEFAULT_ROWS = 24      # and 0 rows
NARROWEST = 20         # below this, wrapping at words helps no one: wrap at 20 anyway
INDENT = 4             # continuation lines, so a wrapped line reads as one
# The space between a number and its unit, which a wrap must not take ("1.3" / "s").
NUMBER_UNIT = re.compile(r"(?<=\d) (?=(?:ms|s|min|h|days?|[KMGT]i?B|%)(?!\w))")
KEEP = "\x00"           # stands for such a space while wrapping: textwrap breaks at none
DAY = 24 * 3600        # seconds


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
    kept = NUMBER_UNIT.sub(KEEP, text)
    wrapped = "\n".join("\n".join(textwrap.wrap(line, width, subsequent_indent=" " * indent,
                                                break_on_hyphens=False, break_long_words=True))
                        or line for line in kept.split("\n"))
    return wrapped.replace(KEEP, " ")


def duration(seconds: float | None) -> str:
    """12s, 4m05s, 3h12m; over a day in days (1.5 days, 27 days), never "660h"."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < DAY:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    days = seconds / DAY
    return f"{days:.1f} days" if days < 10 else f"{round(days)} days"


def say(out, text: str) -> None:
    """Print one line (or a few, wrapped to fit) to `out` and flush."""
    out = sys.stdout if out is None else out
    print(fit(text, columns(out)), file=out, flush=True)


@contextlib.contextmanager
def transient(out) -> Iterator[Callable[[str], None]]:
    """A note for a long wait (decoding the data once, say): on a terminal one row, cut to
    its width, that the next line written over it replaces; elsewhere a plain line."""
    out = sys.stdout if out is None else out
    width = columns(out)
    shown = []

    def note(text: str) -> None:
        if width is None:
            say(out, text)
            return
        out.write("\r" + text[:width - 1] + "\x1b[K")
        out.flush()
        shown.append(text)

    try:
        yield note
    finally:
        if shown:
            out.write("\r\x1b[K")   # the row is cleared: the next line starts on it
            out.flush()
