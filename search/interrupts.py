"""Ctrl-C and SIGTERM end a search cleanly: the running trial ends FAIL, nothing is left
RUNNING, no heartbeat thread keeps the process alive, and no traceback is printed."""
from __future__ import annotations

import contextlib
import logging
import signal

import optuna
from optuna.trial import TrialState


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM end a search cleanly: no trial left RUNNING, no hang.

    Inside the objective an interrupt raises KeyboardInterrupt: Optuna marks the trial FAIL
    and stops its heartbeat thread. It is raised at once while the trial computes, but not in
    the middle of a storage call (the objective reports each epoch): there it could leave a
    transaction open that holds SQLite's write lock, and every later write, this process's
    own included, would wait out the busy timeout. So it is raised a few milliseconds later,
    once the call has returned. Elsewhere in Optuna's loop (asking for a trial,
    starting its heartbeat thread, storing a result) raising could leave the new trial
    RUNNING, or the heartbeat thread alive so the process never exits; there the interrupt
    is only noted: the study stops, and a trial asked for meanwhile fails before it trains.
    """

    def __init__(self, study: optuna.Study):
        self.study = study
        self.requested = False
        self.trial_ids: list[int] = []  # this process's trial, failed if still RUNNING
        self._in_objective = False

    def guard(self, objective):
        def guarded(trial: optuna.Trial) -> float:
            self.trial_ids[:] = [trial._trial_id]
            self._in_objective = True  # set before the check: no interrupt slips between
            try:
                if self.requested:
                    raise KeyboardInterrupt("interrupted before training")
                return objective(trial)
            finally:
                self._in_objective = False
        return guarded

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return  # a second signal (Ctrl-C reaches every process of the group, and a
            # parent forwards it too) must not interrupt the cleanup of the first
        self.requested = True
        if self._in_objective:
            self._raise_when_safe(frame)
            return
        try:
            self.study.stop()
        except RuntimeError:  # not inside optimize: nothing runs, stop right here
            raise KeyboardInterrupt(f"signal {signum}") from None

    def _raise_when_safe(self, frame) -> None:
        if not self._in_objective:
            return  # the trial ended meanwhile: the guard fails the next one before it trains
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
_STORAGE_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "optuna.storages", "optuna.artifacts")


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


def fail_if_running(study: optuna.Study, trial_ids: list[int]) -> None:
    """Mark this process's trials FAIL if an interrupt left them RUNNING."""
    storage = study._storage
    for trial_id in trial_ids:
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
