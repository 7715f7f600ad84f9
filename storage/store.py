"""The one front of a storage: `open_store(url)` gives a Store, and the search and the reports
use nothing else of this package.

A Store is the Optuna storage a URL names (storage/open.py: checked, riding out outages) with
what lives beside it: the artifact folder (pictures, checkpoints, the study locks), the lock of
a study, a running trial's heartbeat and background writer, and fresh reads of a trial. The URL
is parsed once, here. Callers give `store.optuna` to optuna.create_study / load_study.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage import internals, retries
from storage.artifacts import ArtifactStore
from storage.lock import study_lock
from storage.open import (DEFAULT_PATIENCE_SECONDS, DEFAULT_STORAGE, artifact_dir,
                          open_storage, redact, storage_kind)
from storage.sqlite import keep_signals_off_this_thread
from storage.writer import TrialWriter

HEARTBEAT_JOIN_SECONDS = 1.0   # a beat waiting out an outage is not waited for at the end


@dataclass(eq=False)
class Store:
    url: str
    kind: str                            # sqlite | journal | postgresql
    optuna: optuna.storages.BaseStorage  # what optuna.create_study / load_study take
    readonly: bool = False
    _artifacts: ArtifactStore | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """What messages call it: the URL without its password."""
        return redact(self.url)

    @property
    def local(self) -> bool:
        """A file on this machine's disk (SQLite, journal), not a server."""
        return self.kind in ("sqlite", "journal")

    @property
    def patience(self) -> float:
        """Seconds a call rides out an outage of the database (journal files: none)."""
        return getattr(self.optuna, "patience", DEFAULT_PATIENCE_SECONDS)

    @property
    def heartbeat_seconds(self) -> int | None:
        """How often a running trial beats (None: no heartbeat, so no retry of dead trials)."""
        get = getattr(self.optuna, "get_heartbeat_interval", None)
        return get() if get is not None else None

    # ---------------------------------------------------------------- beside the storage

    @property
    def artifact_folder(self) -> Path:
        return artifact_dir(self.url)

    @property
    def checkpoint_folder(self) -> Path:
        return self.artifact_folder / "checkpoints"

    def artifacts(self) -> ArtifactStore:
        """The artifact store in the artifact folder (made on first use): Optuna's, writing
        each artifact whole or not at all (storage/artifacts.py)."""
        if self._artifacts is None:
            if not self.readonly:
                self.artifact_folder.mkdir(parents=True, exist_ok=True)
            self._artifacts = ArtifactStore(self.artifact_folder)
        return self._artifacts

    def lock(self, study_name: str):
        """The study's lock (storage/lock.py), held while deciding what runs next."""
        return study_lock(self.optuna, self.url, study_name)

    # ---------------------------------------------------------------- a running trial

    def trial(self, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
        """The trial as stored now (not a cached copy): its reported epochs, attributes."""
        return self.optuna.get_trial(internals.trial_id(trial))

    def first_try(self, study: optuna.Study, trial: FrozenTrial) -> FrozenTrial:
        """The trial whose retry `trial` is (the first try of a retried trial), or itself."""
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)
        if not history:
            return trial
        return self.optuna.get_trial(self.optuna.get_trial_id_from_study_id_trial_number(
            internals.study_id(study), history[0]))

    # ---------------------------------------------------------------- failures and retries

    def fail_stale_trials(self, study: optuna.Study) -> None:
        """Fail the trials whose process died (silent heartbeat) and queue their retries; and
        queue any retry a process killed after a FAIL did not (storage/retries.py). Under the
        study's lock."""
        if self.heartbeat_seconds is not None:
            retries.fail_stale_trials(self.optuna, study)
        retries.queue_lost_retries(study)

    def fail_and_retry(self, study: optuna.Study, trial: optuna.Trial,
                       finish) -> FrozenTrial | None:
        """`finish()` marks the trial FAIL, and its retry is queued, so that a kill in between
        loses no retry (storage/retries.py); None if another process finished it first."""
        return retries.fail_and_retry(self.optuna, study, internals.trial_id(trial), finish)

    def writer(self, trial: optuna.Trial) -> TrialWriter:
        """A background writer of the trial's epochs and attributes (storage/writer.py)."""
        return TrialWriter(self.optuna, internals.trial_id(trial))

    def set_system_attr(self, trial: optuna.Trial, key: str, value) -> None:
        """A trial system attribute (Optuna 5's Trial has no setter): long data that the
        dashboard's trial page would show as one giant line (reports/trial_data.py)."""
        self.optuna.set_trial_system_attr(internals.trial_id(trial), key, value)

    def beat_once(self, trial: optuna.Trial) -> None:
        """The trial's first heartbeat: recorded at its claim, before the study's lock goes,
        so a process killed right after claiming leaves a trial that goes stale; one killed
        before this beat leaves a trial judged by its start (internals.stale_trial_ids)."""
        if self.heartbeat_seconds is not None:
            self.optuna.record_heartbeat(internals.trial_id(trial))

    @contextlib.contextmanager
    def heartbeat(self, trial: optuna.Trial) -> Iterator[None]:
        """Beat for the trial every interval while the block runs (SQL storages)."""
        interval = self.heartbeat_seconds
        if interval is None:
            yield
            return
        stop = threading.Event()

        def beat():
            keep_signals_off_this_thread()
            while not stop.wait(interval):
                try:
                    self.optuna.record_heartbeat(internals.trial_id(trial))
                except Exception:  # the next beat tries again; long outages are reported
                    pass

        thread = threading.Thread(target=beat, name=f"heartbeat-{internals.trial_id(trial)}",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            # A beat may be waiting out an outage (up to the patience): don't wait for it;
            # the thread is a daemon and ends with its retry.
            thread.join(timeout=HEARTBEAT_JOIN_SECONDS)

    def fail(self, study: optuna.Study, trial: optuna.Trial, reason: str,
             seconds: float) -> bool:
        """Mark the trial FAIL with `reason` if the storage answers within `seconds` (it is
        going away); True if it did. The patience is this thread's only: a heartbeat thread
        riding out the same outage keeps its own."""
        try:
            with self.patience_for(seconds):
                self.optuna.set_trial_user_attr(internals.trial_id(trial), "fail_reason",
                                                reason[:500])
                study.tell(trial, state=TrialState.FAIL)
            return True
        except Exception:  # still away: the heartbeat stops, and the trial goes stale
            return False

    @contextlib.contextmanager
    def patience_for(self, seconds: float) -> Iterator[None]:
        """Calls made by this thread in the block ride out `seconds` of an outage at most."""
        for_thread = getattr(self.optuna, "patience_for_this_thread", None)
        if for_thread is None:
            yield
            return
        with for_thread(seconds):
            yield


def open_store(url: str = DEFAULT_STORAGE, *, patience: float | None = None,
               readonly: bool = False, heartbeat: bool = True) -> Store:
    """The Store of `url` (checked first; creates an SQLite or journal file unless readonly).

    readonly: for commands that only look (dashboard, report, studies): a missing file is an
    error, readers take no write lock and run no heartbeat (a reader never fails a trial)."""
    storage = open_storage(url, heartbeat=heartbeat, readonly=readonly,
                           patience=DEFAULT_PATIENCE_SECONDS if patience is None else patience)
    return Store(url=url, kind=storage_kind(url), optuna=storage, readonly=readonly)
