"""How a failed trial is queued again, so that no retry is ever lost.

A retry is a WAITING copy of the failed trial (Optuna's RetryHeartbeatStaleTrialCallback: same
params, attributes and reported epochs; `retry_history` lists the tries before it), MAX_TRIES
tries in all. Marking a trial FAIL and queuing its retry are two writes: a process killed
between them would lose the retry (the trial FAIL, nothing queued, the point never run). So:

1. the trial is first marked `retry_due` (a system attribute), while still RUNNING;
2. then it is marked FAIL;
3. then its retry is queued, unless one is queued already (a retry names the trial it retries
   last in its `retry_history`).
Whoever decides what runs next (search/claim.py, under the study's lock) first queues the
retry of every FAIL marked `retry_due` that has none (queue_lost_retries): a kill between any
two steps leaves either a RUNNING trial that goes stale and is failed again, or a FAIL whose
retry the next process queues. Every step may run twice.
"""
from __future__ import annotations

import copy
import warnings

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from storage import internals

MAX_TRIES = 3          # a trial (a grid point, an interrupted trial) runs 3 times at most
RETRY_DUE = "retry_due"
HISTORY = "retry_history"

with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    class Retry(optuna.storages.RetryHeartbeatStaleTrialCallback):
        """Optuna's retry, queued once per failed trial however often it is asked for."""

        def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
            if _has_retry(study, trial.number):
                return
            trial = copy.deepcopy(trial)
            trial.system_attrs.pop(RETRY_DUE, None)   # the retry's own failure decides its own
            super().__call__(study, trial)


def retry_callback() -> Retry:
    """The retry of a dead worker's trial (the heartbeat's) and of an interrupted trial or
    failed grid point (search/run.py): MAX_TRIES tries in all, with the reported epochs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return Retry(max_retry=MAX_TRIES - 1, inherit_intermediate_values=True)


def fail_and_retry(storage, study: optuna.Study, trial_id: int,
                   finish=None) -> FrozenTrial | None:
    """Steps 1-3 for one trial of `study` in `storage`: `finish()` marks it FAIL (default: a
    plain FAIL). None when the trial was finished already (by another process)."""
    try:
        storage.set_trial_system_attr(trial_id, RETRY_DUE, True)
        if finish is not None:
            finish()
        elif not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return None
    except UpdateFinishedTrialError:
        return None
    failed = storage.get_trial(trial_id)
    retry_callback()(study, failed)
    return failed


def fail_stale_trials(storage, study: optuna.Study) -> None:
    """Optuna's fail_stale_trials, in steps 1-3: each trial whose heartbeat went silent past
    the grace period (its process died), or that never beat and started before it, is failed
    and queued again."""
    for trial_id in internals.stale_trial_ids(storage, study):
        fail_and_retry(storage, study, trial_id)


def queue_lost_retries(study: optuna.Study) -> int:
    """Queue the retry of each FAIL marked retry_due that has none (its failer died between
    steps 2 and 3); returns how many were queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs[HISTORY][-1] for t in trials if t.system_attrs.get(HISTORY)}
    lost = [t for t in trials if t.state == TrialState.FAIL and t.system_attrs.get(RETRY_DUE)
            and t.number not in retried]
    before = len(trials)
    for trial in lost:
        retry_callback()(study, trial)
    return len(study.get_trials(deepcopy=False)) - before


def _has_retry(study: optuna.Study, number: int) -> bool:
    return any(t.system_attrs.get(HISTORY, [None])[-1] == number
               for t in study.get_trials(deepcopy=False))

