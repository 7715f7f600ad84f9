"""A running trial's writes, applied in the background so that training goes on while the
storage is away.

    writer = TrialWriter(storage, trial_id)
    writer.report(epoch, val_acc)          # returns at once
    writer.set_system_attr("optuna_search:curves", curves)   # long data: hidden from the dashboard
    if writer.flush(timeout=0) ...         # True once everything has landed
    writer.close()

One thread applies the writes in the order they were made, each through the storage's own
retry (storage/resilient.py), so after an outage they land in order, none lost; none doubled,
since each write is keyed (step, attribute name) and a repeat stores the same thing.
One exception to "in order", not visible in what is stored at the end: set_user_attr (or
set_system_attr) of a key that is still waiting replaces that write by a new one at the end
of the queue (only the latest value of an attribute matters). Heartbeats are not written
here: search/run.py's heartbeat thread writes them.
When the storage gives up (StorageUnavailable past its patience, StorageFailure, or the trial
was finished by someone else: UpdateFinishedTrialError) the thread stops, keeps the write that
failed and those after it (pending() counts them), and `error` holds the exception, raised again
by the next report/set_user_attr/set_system_attr/flush.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any

from storage.sqlite import keep_signals_off_this_thread


class TrialWriter:
    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.error: BaseException | None = None
        self._writes: collections.deque[tuple] = collections.deque()  # ("report", step, value)
        self._in_flight: tuple | None = None  # the write the thread is applying
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._apply_all, daemon=True,
                                        name=f"trial-writer-{trial_id}")
        self._thread.start()

    # ---------------------------------------------------------------- called by the trial

    def report(self, step: int, value: float) -> None:
        """The trial's intermediate value at `step` (set_trial_intermediate_value)."""
        self._add(("report", int(step), float(value)))

    def set_user_attr(self, key: str, value: Any) -> None:
        self._replace(("user_attr", key, value))

    def set_system_attr(self, key: str, value: Any) -> None:
        """A trial system attribute: data too long to show on the dashboard's trial page."""
        self._replace(("system_attr", key, value))

    def pending(self) -> int:
        """How many writes have not landed yet (the one being applied included)."""
        with self._changed:
            return len(self._writes) + (self._in_flight is not None)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every write to land: True if they all have.
        Raises the error that stopped the writer."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                self._raise_error()
                if not (self._writes or self._in_flight):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the thread once the write in flight is done; writes still queued are dropped
        (flush first). True if the thread has ended within `timeout` seconds (it may be
        waiting out an outage in its last write; it is a daemon and dies with the process)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---------------------------------------------------------------- the background thread

    def _replace(self, write: tuple) -> None:
        """Queue an attribute write, dropping a waiting write of the same attribute."""
        with self._changed:
            self._raise_error()
            self._writes = collections.deque(w for w in self._writes if w[:2] != write[:2])
        self._add(write)

    def _add(self, write: tuple) -> None:
        with self._changed:
            self._raise_error()
            if self._closed:
                raise RuntimeError(f"the writer of trial {self.trial_id} is closed")
            self._writes.append(write)
            self._changed.notify_all()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _apply_all(self) -> None:
        keep_signals_off_this_thread()  # an SQLite call here must not fail with EINTR
        try:
            while True:
                with self._changed:
                    while not (self._closed or self._writes):
                        self._changed.wait()
                    if self._closed:
                        return
                    write = self._writes.popleft()
                    self._in_flight = write
                try:
                    self._apply(write)
                except Exception as error:
                    with self._changed:
                        self.error, self._in_flight = error, None
                        self._writes.appendleft(write)  # kept: pending() counts it
                        self._changed.notify_all()
                    return
                with self._changed:
                    self._in_flight = None
                    self._changed.notify_all()
        finally:
            remove_session = getattr(self.storage, "remove_session", None)
            if remove_session:
                remove_session()  # give this thread's connection back to the pool

    def _apply(self, write: tuple) -> None:
        kind, *args = write
        if kind == "report":
            self.storage.set_trial_intermediate_value(self.trial_id, *args)
        elif kind == "system_attr":
            self.storage.set_trial_system_attr(self.trial_id, *args)
        else:
            self.storage.set_trial_user_attr(self.trial_id, *args)
