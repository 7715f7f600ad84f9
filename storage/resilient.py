"""Optuna's RDBStorage that rides out an outage of its database and names a fault in one line.

Every storage call runs Optuna's own code; when it fails with a transient fault (storage/faults.py:
the server restarting, a lost connection, SQLite's lock held past its busy timeout) the whole
call is run again after a backoff, for up to `patience` seconds in all, then StorageUnavailable.
A permanent fault (full disk, read-only, permission, corrupt file) is StorageFailure at once.
Pooled connections are pinged before use, so the first call after a restart does not fail on a
connection the server has closed.

Running a call again must not write twice. Why it cannot, per call:
- set_trial_intermediate_value, set_trial_user_attr/system_attr, set_study_user_attr/
  system_attr, record_heartbeat: upserts keyed by (trial, step) or (trial or study, key): the
  second write stores what the first stored.
- set_trial_param: keyed by (trial, name); Optuna ignores the IntegrityError of a repeat.
- set_trial_state_values to a finished state: a repeat finds the trial finished and raises
  UpdateFinishedTrialError; after a lost answer, a trial found in the very state (and values)
  asked for counts as done. Claiming a WAITING trial (state RUNNING) writes a claim token in
  the same transaction; a repeat that finds the trial RUNNING with our token has won it, so a
  lost answer never leaves a trial RUNNING that nobody runs.
- create_new_trial: the new trial carries a creation token (system attr); a repeat first looks
  for a trial of the study with that token and returns it, so a lost answer makes no duplicate.
- create_new_study: a repeat that finds the name taken returns that study's id;
  delete_study: a repeat that finds the study gone is done.
- every get_*: reads.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import random
import threading
import time
import uuid
from typing import Callable, Iterator, TypeVar

from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from storage import internals
from storage.faults import PERMANENT, StorageFailure, StorageUnavailable, classify
from storage.notices import Reconnects, quiet_driver_logs
from storage.schema import schema_lock, server_schema_lock
from storage.sqlite import SQLiteSettings

T = TypeVar("T")
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0  # short: a trial's heartbeat must land soon after the server is back
TOKEN_PREFIX = "storage:"  # our tokens among a trial's system attrs, hidden from readers
CREATED_KEY = TOKEN_PREFIX + "created_by"  # the token of the call that made the trial
CLAIMED_KEY = TOKEN_PREFIX + "claimed_by"  # ... and of the call that moved it WAITING -> RUNNING


def _retried(method: Callable) -> Callable:
    """RDBStorage's `method`, run again on transient faults (see ResilientStorage._retry)."""
    def call(self, *args, **kwargs):
        return self._retry(lambda _again: method(self, *args, **kwargs))
    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


class ResilientStorage(RDBStorage):
    """RDBStorage whose calls survive an outage of up to `patience` seconds (see above).

    `name` is what messages call the storage (the SQLite file, or the URL without password).
    `sqlite`: the settings of an SQLite file (storage/sqlite.py), applied whenever the engine
    is made, when unpickled too; None for a server."""

    def __init__(self, url: str, *, name: str, patience: float,
                 sqlite: SQLiteSettings | None = None, **kwargs):
        self.display_name, self.patience, self.sqlite = name, patience, sqlite
        self.path = sqlite.path if sqlite else None
        self._local = threading.local()
        self._outage_since: float | None = None  # first failure of the outage now under way
        self._reconnects = Reconnects(name)      # says, now and then, that calls were retried
        quiet_driver_logs()                      # ... and Optuna and SQLAlchemy do not
        # Several processes (an array of Slurm tasks, a Job's pods) may make a new database's
        # tables at once: one at a time, or all but one fail ("type studydirection exists").
        with schema_lock(self.path), server_schema_lock(url, kwargs.get("engine_kwargs")):
            super().__init__(url, **kwargs)
        if sqlite:
            sqlite.install(self.engine)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        state["_local"] = threading.local()
        state["_outage_since"] = None  # another process's clock
        quiet_driver_logs()
        with schema_lock(state["path"]):
            super().__setstate__(state)  # a new engine: without the SQLite settings
        if self.sqlite:
            self.sqlite.install(self.engine)

    # ---------------------------------------------------------------- the retry loop

    @contextlib.contextmanager
    def patience_for_this_thread(self, seconds: float) -> Iterator[None]:
        """This thread's calls in the block ride out `seconds` at most (another thread, a
        heartbeat riding out the same outage, keeps the storage's patience)."""
        previous = getattr(self._local, "patience", None)
        self._local.patience = seconds
        try:
            yield
        finally:
            self._local.patience = previous

    def _patience_now(self) -> float:
        own = getattr(self._local, "patience", None)
        return self.patience if own is None else min(own, self.patience)

    def retrying(self, call: Callable[[], T]) -> T:
        """`call()` (something else that talks to this storage's database, such as taking a
        lock) retried like the storage's own calls."""
        return self._retry(lambda _again: call())

    def _retry(self, attempt: Callable[[bool], T]) -> T:
        """attempt(again) until it returns; `again` is True once an attempt has failed with a
        transient fault, when the first attempt may have written all the same (a lost answer).

        Only the outermost storage call retries: RDBStorage's methods call each other, and
        retrying inside would multiply the patience."""
        if getattr(self._local, "depth", 0):
            return attempt(False)
        started, backoff, again = time.monotonic(), FIRST_BACKOFF_SECONDS, False
        patience, what = self._patience_now(), ""
        while True:
            self._local.depth = 1
            try:
                answer = attempt(again)
                self._outage_since = None   # the database answers: the outage is over
                if again:
                    self._reconnects.back(what)
                return answer
            except Exception as error:
                fault = classify(error, self.path)
                if fault is None:
                    raise
                kind, what = fault
                if kind == PERMANENT:
                    raise StorageFailure(f"storage {self.display_name}: {what}") from error
                # One window per outage, from its first failure, shared by every call and
                # thread: calls one after another (a claim, the FAIL of a trial, a heartbeat)
                # do not each wait the patience again.
                now = time.monotonic()
                if self._outage_since is None:
                    self._outage_since = now
                waited = max(now - started, now - self._outage_since)
                if now - started >= patience or now - self._outage_since >= self.patience:
                    raise StorageUnavailable(
                        f"storage {self.display_name} was unreachable for {waited:.0f} s "
                        f"(patience {patience:g} s): {what}") from error
            finally:
                self._local.depth = 0
            self.scoped_session.remove()  # a fresh session (and pooled connection) next time
            self._reconnects.retried()
            # jitter: workers waiting on one server do not all knock at the same moment
            time.sleep(max(0.0, min(backoff * random.uniform(0.5, 1.0), patience - waited,
                                    self.patience - waited)))
            backoff, again = min(2 * backoff, MAX_BACKOFF_SECONDS), True

    # ---------------------------------------------------------------- calls that are plain reruns

    set_study_user_attr = _retried(RDBStorage.set_study_user_attr)
    set_study_system_attr = _retried(RDBStorage.set_study_system_attr)
    get_study_id_from_name = _retried(RDBStorage.get_study_id_from_name)
    get_study_name_from_id = _retried(RDBStorage.get_study_name_from_id)
    get_study_directions = _retried(RDBStorage.get_study_directions)
    get_study_user_attrs = _retried(RDBStorage.get_study_user_attrs)
    get_study_system_attrs = _retried(RDBStorage.get_study_system_attrs)
    get_all_studies = _retried(RDBStorage.get_all_studies)
    set_trial_param = _retried(RDBStorage.set_trial_param)
    _set_trial_param = _retried(RDBStorage._set_trial_param)
    get_trial_param = _retried(RDBStorage.get_trial_param)
    set_trial_intermediate_value = _retried(RDBStorage.set_trial_intermediate_value)
    set_trial_user_attr = _retried(RDBStorage.set_trial_user_attr)
    set_trial_system_attr = _retried(RDBStorage.set_trial_system_attr)
    get_trial_id_from_study_id_trial_number = _retried(
        RDBStorage.get_trial_id_from_study_id_trial_number)
    get_trial_number_from_id = _retried(RDBStorage.get_trial_number_from_id)
    get_trial = _retried(RDBStorage.get_trial)
    get_trial_params = _retried(RDBStorage.get_trial_params)
    get_trial_user_attrs = _retried(RDBStorage.get_trial_user_attrs)
    get_all_trials = _retried(RDBStorage.get_all_trials)
    _get_trials = _retried(RDBStorage._get_trials)
    get_n_trials = _retried(RDBStorage.get_n_trials)
    get_best_trial = _retried(RDBStorage.get_best_trial)
    _get_best_trial_id = _retried(RDBStorage._get_best_trial_id)
    record_heartbeat = _retried(RDBStorage.record_heartbeat)
    _get_stale_trial_ids = _retried(RDBStorage._get_stale_trial_ids)

    # ---------------------------------------------------------------- what callers read

    def get_trial_system_attrs(self, trial_id: int) -> dict:
        """What callers set, without our tokens (Optuna's contract; its storage test-suite)."""
        attrs = self._retry(lambda _again: RDBStorage.get_trial_system_attrs(self, trial_id))
        return {k: v for k, v in attrs.items() if not k.startswith(TOKEN_PREFIX)}

    def _build_frozen_trial_from_trial_model(self, trial) -> FrozenTrial:
        """Every trial Optuna's reads return is built here: without our tokens."""
        frozen = RDBStorage._build_frozen_trial_from_trial_model(self, trial)
        frozen.system_attrs = {k: v for k, v in frozen.system_attrs.items()
                               if not k.startswith(TOKEN_PREFIX)}
        return frozen

    # ---------------------------------------------------------------- calls a rerun must check

    def create_new_study(self, directions, study_name=None) -> int:
        def attempt(again: bool) -> int:
            try:
                return RDBStorage.create_new_study(self, directions, study_name)
            except DuplicatedStudyError:
                if again and study_name is not None:  # made by the attempt whose answer was lost
                    return RDBStorage.get_study_id_from_name(self, study_name)
                raise
        return self._retry(attempt)

    def delete_study(self, study_id: int) -> None:
        def attempt(again: bool) -> None:
            try:
                RDBStorage.delete_study(self, study_id)
            except KeyError:
                if not again:  # gone after a lost answer: deleted by the first attempt
                    raise
        self._retry(attempt)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values=None) -> bool:
        token = uuid.uuid4().hex

        def attempt(again: bool) -> bool:
            if state == TrialState.RUNNING and values is None:
                return internals.claim_waiting(self, trial_id, CLAIMED_KEY, token)
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if again:  # finished by the attempt whose answer was lost?
                    stored = RDBStorage.get_trial(self, trial_id)
                    if stored.state == state and (values is None
                                                  or stored.values == list(values)):
                        return True
                raise
        return self._retry(attempt)

    def _create_new_trial(self, study_id: int,
                          template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's trial creation (storage/internals.py; Optuna's _CachedStorage calls this
        method by name), made idempotent by a creation token: a rerun returns the trial the
        lost attempt made."""
        token = uuid.uuid4().hex
        template = _template_with_token(template_trial, token)

        def attempt(again: bool) -> FrozenTrial:
            if again:
                made = internals.trial_made_by(self, study_id, CREATED_KEY, token)
                if made is not None:
                    return made
            return internals.create_trial(self, study_id, template)
        return self._retry(attempt)


def _template_with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """A copy of `template` (or of Optuna's default new trial: RUNNING, started now) that
    carries the creation token and no claim copied from the trial it retries."""
    if template is None:
        template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None,
                               datetime_start=datetime.datetime.now(), datetime_complete=None,
                               params={}, distributions={}, user_attrs={}, system_attrs={},
                               intermediate_values={}, trial_id=-1)
    template = copy.deepcopy(template)
    template.system_attrs.pop(CLAIMED_KEY, None)
    template.system_attrs[CREATED_KEY] = token
    return template
