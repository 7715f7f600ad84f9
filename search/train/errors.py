"""What the trainer's errors and warnings say: DataError (data a user pointed at that cannot be
loaded: one line and exit 2, search/cli) and first_line, for one-line messages.

Kept apart from storage's own first_line: the trainer imports neither optuna nor storage."""
from __future__ import annotations


class DataError(RuntimeError):
    """The data the user pointed at cannot be loaded; the message says why and what to do."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, at most `limit` characters; the error's type
    name if the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__
