"""Ctrl-C and SIGTERM end a search cleanly: the running trial ends FAIL (and is queued again),
nothing is left RUNNING, no heartbeat thread keeps the process alive, no traceback is printed.

A stop is a state of the process, not only an exception. Every handler of ours notes it first
(`note_stop`), and every loop that may run for long reads it (`stop_requested`): each training
step and evaluation batch (the trainer gets it as a plain callable), each image read and
decoded while the data loads, the run loop before each claim and while it waits, the
launchers while they wait for their runners. The KeyboardInterrupt a handler raises is only
the quick way out of whatever runs: Python loses one raised inside a finalizer (__del__, a
weakref or gc callback: it prints "Exception ignored" and goes on), a library may swallow
one; the state stays, and the next check raises again (search/train/errors.Stopped).

A process raises at most one KeyboardInterrupt per stop, and only inside a `raising()` block
that a `try ... except KeyboardInterrupt` encloses: a second signal (a terminal's Ctrl-C
reaches every process of the group, and a launcher forwards it too) is only noted, so it can
never land in the cleanup of the first, outside every `try`, as a traceback.
"""
from __future__ import annotations

import contextlib
import signal
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stops: list[int] = []   # the stop signals this process received, the first first


def stop_requested() -> bool:
    """Whether this process was asked to stop (SIGINT, SIGTERM); read by every long loop."""
    return bool(_stops)


def note_stop(signum: int) -> bool:
    """Note a stop signal; True when it is the first (the one that may raise)."""
    first = not _stops
    _stops.append(signum)
    return first


def check_stop() -> None:
    """Raise KeyboardInterrupt when a stop was requested (between two stages of a command)."""
    if _stops:
        raise KeyboardInterrupt("stopped")


def forget_stops() -> None:
    """A new command in this process (search.cli.main, a test): no stop requested yet."""
    _stops.clear()


def unheard_lost_interrupts(previous):
    """A sys.unraisablehook that drops the KeyboardInterrupt of a noted stop, lost where Python
    cannot raise it ("Exception ignored in ..."): the state stops the process all the same."""
    def hook(info):
        if not (isinstance(info.exc_value, KeyboardInterrupt) and stop_requested()):
            previous(info)
    return hook


class Interrupts:
    """Where an interrupt may raise, and where it is only noted.

    Inside `raising()` (training a trial, loading data, waiting for other processes) the first
    SIGINT/SIGTERM raises KeyboardInterrupt at once, but not in the middle of a storage call
    nor inside torch's own Python code (see _UNSAFE_MODULES), where it is raised a few
    milliseconds later, once that call has returned. Everywhere else (claiming a trial
    under the study's lock, recording how it ended) the interrupt is only noted: the run loop
    looks at `requested` before it claims the next trial.
    """

    def __init__(self):
        self._raising = False

    @property
    def requested(self) -> bool:
        return stop_requested()

    @contextlib.contextmanager
    def raising(self):
        self._raising = True  # before the check: an interrupt between the two still raises
        try:
            if stop_requested():
                raise KeyboardInterrupt("interrupted before it started")
            yield
        finally:
            self._raising = False
            signal.setitimer(signal.ITIMER_REAL, 0)   # a raise still waiting is moot now

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds`, returning early when an interrupt is requested."""
        deadline = time.monotonic() + seconds
        while not stop_requested() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _handle(self, signum, frame) -> None:
        if note_stop(signum) and self._raising:
            self._raise_when_safe(frame)

    def _raise_when_safe(self, frame) -> None:
        if not self._raising:
            return  # the trial ended meanwhile: the loop sees `requested` before the next
        if _unsafe_to_raise(frame):
            signal.signal(signal.SIGALRM, lambda _s, later: self._raise_when_safe(later))
            signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
            return
        raise KeyboardInterrupt("interrupted")

    def install(self) -> dict:
        """Handle SIGINT and SIGTERM here (from now on, for good); returns the previous
        handlers of those and of SIGALRM."""
        signals = (*STOP_SIGNALS, signal.SIGALRM)
        previous = {s: signal.getsignal(s) for s in signals}
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        return previous

    @contextlib.contextmanager
    def installed(self):
        previous = self.install()
        try:
            yield self
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, handler in previous.items():
                if handler is not None:   # None: set outside Python; left as it is
                    signal.signal(signum, handler)


RETRY_SECONDS = 0.02  # how soon to look again whether the interrupted call has returned
# Where a KeyboardInterrupt waits: inside a database or artifact-store call (raised there, it
# could leave a transaction open that holds SQLite's write lock, and every later write, this
# process's own included, would wait out the busy timeout), and inside torch's Python code
# (torch's C++ calls back into Python while it imports: raised there, the exception becomes a
# C++ one nothing catches and the process aborts, "terminate called after throwing an instance
# of 'pybind11::error_already_set'", exit -6: 1 of 90 soak tries, Ctrl-C during the imports).
# And inside code that exec() or eval() runs from a string (dataclasses make their methods so):
# a KeyboardInterrupt out of it marks the interpreter (CPython 3.11), which then ends by SIGINT
# whatever the program returns, under `python -m` (exit -2 after our line: 4 of 120 tries).
_UNSAFE_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "optuna.storages", "optuna.artifacts",
                   "storage.", "torch")


def _unsafe_to_raise(frame) -> bool:
    """Whether the interrupted code is inside a storage call, torch's code or code run from a
    string (the callers of `frame` included)."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_UNSAFE_MODULES):
            return True
        code = frame.f_code   # a string's code run by exec()/eval(), not `python -c`'s own
        if code.co_name == "<module>" and code.co_filename == "<string>" and frame.f_back:
            return True
        frame = frame.f_back
    return False


def hide_interrupt_traceback(record: "logging.LogRecord") -> bool:
    """Ctrl-C is no error: keep Optuna from logging the interrupted trial's traceback."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))
