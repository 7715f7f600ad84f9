"""Ctrl-C and SIGTERM end a search cleanly: the running trial ends FAIL (and is queued again),
nothing is left RUNNING, no heartbeat thread keeps the process alive, no traceback is printed."""
from __future__ import annotations

import contextlib
import logging
import signal
import time


class Interrupts:
    """Where an interrupt may raise, and where it is only noted.

    Inside `raising()` (training a trial, loading data, waiting for other processes) the first
    SIGINT/SIGTERM raises KeyboardInterrupt at once, but not in the middle of a storage call:
    there it could leave a transaction open that holds SQLite's write lock, and every later
    write, this process's own included, would wait out the busy timeout. So it is raised a
    few milliseconds later, once the call has returned. Everywhere else (claiming a trial
    under the study's lock, recording how it ended) the interrupt is only noted: the run loop
    looks at `requested` before it claims the next trial.
    """

    def __init__(self):
        self.requested = False
        self._raising = False

    @contextlib.contextmanager
    def raising(self):
        self._raising = True  # before the check: an interrupt between the two still raises
        try:
            if self.requested:
                raise KeyboardInterrupt("interrupted before it started")
            yield
        finally:
            self._raising = False

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds`, returning early when an interrupt is requested."""
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return  # a second signal (Ctrl-C reaches every process of the group, and a
            # parent forwards it too) must not interrupt the cleanup of the first
        self.requested = True
        if self._raising:
            self._raise_when_safe(frame)

    def _raise_when_safe(self, frame) -> None:
        if not self._raising:
            return  # the trial ended meanwhile: the loop sees `requested` before the next
        if _in_storage_call(frame):
            signal.signal(signal.SIGALRM, lambda _s, later: self._raise_when_safe(later))
            signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
            return
        raise KeyboardInterrupt("interrupted")

    @contextlib.contextmanager
    def installed(self):
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
        previous = {s: signal.getsignal(s) for s in signals}
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, handler in previous.items():
                signal.signal(signum, handler)


RETRY_SECONDS = 0.02  # how soon to look again whether a storage call has returned
_STORAGE_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "optuna.storages", "optuna.artifacts",
                    "storage.")


def _in_storage_call(frame) -> bool:
    """Whether the interrupted code is inside a database or artifact-store call."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


def hide_interrupt_traceback(record: logging.LogRecord) -> bool:
    """Ctrl-C is no error: keep Optuna from logging the interrupted trial's traceback."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))
