"""What runs next, decided from the storage alone, under the study's lock (storage/lock.py).

- heartbeat-stale trials (their process died; or it died before their first beat, and they
  started over the grace period ago) are failed and queued again as retries, and
  a failed trial whose retry was lost (its failer killed in between) is queued again;
- a grid study runs its queued points (put in the storage once, by search/study.py), and an
  audit the pruned trials search/audit.py queued;
- any other study runs a queued trial (a retry, a published row) or samples a new one while
  finished (COMPLETE + PRUNED) + running trials stay below the study's target, and its space
  has configurations left; a repeat of a trained configuration does not count (it trains
  nothing: search/objective.py answers it from the trained one).
When nothing can be claimed but trials still run elsewhere, the answer is WAIT: one of them
may die and come back as a retry. search/run.py asks, runs what it gets, and records it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.settings import RunSettings
from reports.table import REPEAT_ATTR
from search.study import TARGET_ATTR
from spaces import get_space
from storage import Store

DONE, WAIT = "done", "wait"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Tally:
    """The study's trials by state, read from the storage, and its target."""
    finished: int      # COMPLETE + PRUNED and trained: what the target counts
    running: int
    waiting: int       # queued: retries, grid points, published rows
    target: int        # the study's target; for a grid, its number of points
    repeats: int = 0   # finished without training: answered from a trained twin
    space: int | None = None   # distinct configurations the space has (None: continuous)

    @property
    def exhausted(self) -> bool:
        """Every configuration of a finite space is trained: no sampler can find another."""
        return self.space is not None and self.finished >= self.space


def tally(study: optuna.Study, settings: RunSettings) -> Tally:
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    repeats = sum(REPEAT_ATTR in t.user_attrs for t in trials if t.state in FINISHED)
    spec = settings.spec
    if spec.audit_of is not None:   # the pruned trials search/audit.py queued
        target = study.user_attrs.get(TARGET_ATTR, 0)
    else:
        target = len(spec.grid_points) if spec.grid else study.user_attrs[TARGET_ATTR]
    space = None if spec.queued_only else get_space(spec.model).size(spec.space, spec.fixed)
    return Tally(count[TrialState.COMPLETE] + count[TrialState.PRUNED] - repeats,
                 count[TrialState.RUNNING], count[TrialState.WAITING], target, repeats, space)


def is_done(study: optuna.Study, settings: RunSettings) -> bool:
    """Nothing left to run: the target is met, or a grid's queue is empty and none runs."""
    t = tally(study, settings)
    if settings.spec.queued_only:
        return not t.waiting and not t.running
    return t.finished >= t.target or t.exhausted


def progress_line(study: optuna.Study, settings: RunSettings) -> str:
    t = tally(study, settings)
    what = "grid points" if settings.spec.grid and not settings.spec.audit_of else "trials"
    line = f"{t.finished} of {t.target} {what} finished"
    busy = [f"{n} {name}" for n, name in ((t.running, "running"), (t.waiting, "queued")) if n]
    return line + (f" ({', '.join(busy)})" if busy else "")


def claim(study: optuna.Study, store: Store, settings: RunSettings):
    """Under the study's lock: a RUNNING trial for this process, or WAIT, or DONE."""
    heartbeat = store.heartbeat_seconds is not None
    store.fail_stale_trials(study)   # and queues a retry its failer died before queuing
    t = tally(study, settings)
    if settings.spec.queued_only:
        if t.waiting:
            return _ask(study, store)
        # Without a heartbeat a dead process's trial stays RUNNING for ever: don't wait on it.
        return WAIT if t.running and heartbeat else DONE
    if t.finished >= t.target or t.exhausted:
        return DONE
    if t.finished + t.running >= t.target:
        return WAIT if heartbeat else DONE
    return _ask(study, store)


def _ask(study: optuna.Study, store: Store) -> optuna.Trial:
    """A queued trial (the oldest first) or a new one, RUNNING, with its first heartbeat."""
    with warnings.catch_warnings():  # we run our own heartbeat around each trial (run.py)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        trial = study.ask()
    store.beat_once(trial)
    return trial
