"""What the trainer's errors and warnings say: DataError (data a user pointed at that cannot be
loaded: one line and exit 2, search/cli), Stopped (the caller asked to stop) and first_line,
for one-line messages.

Kept apart from storage's own first_line: the trainer imports neither optuna nor storage."""
from __future__ import annotations

from typing import Callable


class DataError(RuntimeError):
    """The data the user pointed at cannot be loaded; the message says why and what to do."""


class Stopped(KeyboardInterrupt):
    """The caller's stop check (`should_stop`, a plain callable: Ctrl-C or SIGTERM was noted)
    said stop, between two steps, images or batches. A KeyboardInterrupt, handled as the
    signal's own would have been: that one may have been lost (raised in a finalizer)."""


def check(should_stop: Callable[[], bool] | None) -> None:
    """Raise Stopped when `should_stop` says so (None: never)."""
    if should_stop is not None and should_stop():
        raise Stopped("stopped")


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, at most `limit` characters; the error's type
    name if the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__
