"""What a search spent and what it found along the way, from the storage alone: the one place
that counts epochs, for the report's header, the anytime figure (reports/anytime.py) and the
search-efficiency benchmark (bench/search_efficiency.py).

Epochs are counted honestly:
- a trial's own epochs are those it reported itself: a pruned trial's count up to its prune;
  a failed try's count (it trained them, even if its retry goes on from its checkpoint);
  a retry's count without the ones it inherited from the try before it (Optuna copies them);
- a repeat (a configuration trained already, answered from the store) trains nothing: 0.
Work redone after an interruption between a try's last checkpoint and its kill (at most one
checkpoint interval, 60 s by default) is not counted: nothing records it.

"Running every trained trial to the end" costs each finished, trained trial (complete or
pruned, not a repeat) its configured epochs; what pruning saved is the epochs each pruned
trial had left (a diverged trial, stopped as pruned, counts too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from optuna.trial import FrozenTrial, TrialState

from reports.counts import count_trials
from reports.table import REPEAT_ATTR
from reports.trial_data import trial_config, trial_value

RETRY_HISTORY = "retry_history"   # Optuna's: the numbers of the tries a retry follows
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def own_epochs(trial: FrozenTrial, by_number: dict[int, FrozenTrial]) -> int:
    """The epochs this trial (this try) trained itself; `by_number`: the study's trials."""
    if REPEAT_ATTR in trial.user_attrs:
        return 0
    reported = len(trial.intermediate_values)
    history = trial.system_attrs.get(RETRY_HISTORY) or []
    before = by_number.get(history[-1]) if history else None
    inherited = len(before.intermediate_values) if before is not None else 0
    return max(0, reported - inherited)


def configured_epochs(trial: FrozenTrial, default: int | None = None) -> int | None:
    """The epochs the trial was configured to train (its config; else the study's)."""
    return trial_config(trial).get("epochs", default)


def is_trained(trial: FrozenTrial) -> bool:
    """Finished (complete or pruned) and trained: not a repeat answered from the store."""
    return trial.state in FINISHED and REPEAT_ATTR not in trial.user_attrs


@dataclass(frozen=True)
class Budget:
    trained_epochs: int      # every epoch any try trained (failed and running ones included)
    full_epochs: int         # the finished trained trials, each run to its last epoch
    saved_epochs: int        # of those, the epochs pruning left out (each pruned trial's rest)
    trained_trials: int      # finished and trained (complete + pruned)
    repeats: int             # answered from the store: nothing trained

    @property
    def saved_share(self) -> float | None:
        """What pruning saved, as a fraction of running every trained trial to the end."""
        return self.saved_epochs / self.full_epochs if self.full_epochs else None

    def line(self) -> str:
        """One line for a report's header: "Epochs trained: 143 (running all 30 trained
        trials to the end would cost 300: pruning saved 157, 52%); 2 repeats answered from
        the store (0 epochs)."."""
        repeats = (f"{self.repeats} repeat{'s' if self.repeats != 1 else ''} answered from "
                   "the store (0 epochs)")
        if not self.full_epochs:
            return f"Epochs trained: {self.trained_epochs:,}; {repeats}."
        trials = f"{self.trained_trials} trained trial{'s' if self.trained_trials != 1 else ''}"
        return (f"Epochs trained: {self.trained_epochs:,} (running all {trials} to the end "
                f"would cost {self.full_epochs:,}: pruning saved {self.saved_epochs:,}, "
                f"{100 * self.saved_share:.0f}%); {repeats}.")


def study_budget(trials: Sequence[FrozenTrial], epochs: int | None = None) -> Budget:
    """The budget of a study's trials (`study.get_trials(deepcopy=False)`); `epochs`: the
    study's epochs per trial, for trials that recorded no config."""
    by_number = {t.number: t for t in trials}
    trained = [t for t in trials if is_trained(t)]
    reached = {t.number: len(t.intermediate_values) or trial_value(t, "epochs_run", 0)
               for t in trained}   # a retry's inherited epochs included: trained once
    # A complete trial ran to its end; a pruned one would have run to its configured epochs.
    full = {t.number: reached[t.number] if t.state == TrialState.COMPLETE
            else max(reached[t.number], configured_epochs(t, epochs) or 0) for t in trained}
    return Budget(
        trained_epochs=sum(own_epochs(t, by_number) for t in trials),
        full_epochs=sum(full.values()),
        saved_epochs=sum(full[n] - reached[n] for n in full),
        trained_trials=len(trained), repeats=count_trials(trials).repeats)


def budget_line(study) -> str:
    """The report's header line: epochs trained, what pruning saved, repeats answered."""
    return study_budget(study.get_trials(deepcopy=False)).line()


@dataclass(frozen=True)
class Point:
    """The search as it stood when one trial ended."""
    trial: int             # the trial that ended
    epochs: int            # spent so far (all trials that ended by then)
    seconds: float         # trial seconds spent so far (start to end of each trial, summed)
    best: float | None     # best validation accuracy of a complete trial so far


def anytime(trials: Iterable[FrozenTrial]) -> list[Point]:
    """Best-so-far validation accuracy after each ended trial, in the order they ended.

    The best is the incumbent's: the best value of a COMPLETE trial, as the table ranks them
    (a pruned trial is never the incumbent). Epochs and seconds add up every ended trial's
    own, failed tries included; trials that still run are left out. With several workers the
    seconds are trial-seconds (device time), not wall time.
    """
    trials = list(trials)
    by_number = {t.number: t for t in trials}
    ended = sorted((t for t in trials if t.state in ENDED and t.datetime_complete),
                   key=lambda t: (t.datetime_complete, t.number))
    points, epochs, seconds, best = [], 0, 0.0, None
    for trial in ended:
        epochs += own_epochs(trial, by_number)
        if trial.datetime_start is not None:
            seconds += (trial.datetime_complete - trial.datetime_start).total_seconds()
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if value is not None and not math.isnan(value) and (best is None or value > best):
            best = value
        points.append(Point(trial.number, epochs, seconds, best))
    return points


def epochs_to_reach(points: Sequence[Point], target: float) -> int | None:
    """Epochs spent when the best first reached `target` (None: never)."""
    return next((p.epochs for p in points if p.best is not None and p.best >= target), None)


def best_at(points: Sequence[Point], epochs: float, axis: str = "epochs") -> float | None:
    """The best so far once `epochs` (or seconds, axis="seconds") were spent; a search that
    ended before that keeps its last best."""
    best = None
    for point in points:
        if getattr(point, axis) > epochs:
            break
        best = point.best
    return best


def trained_twice(trials: Iterable[FrozenTrial]) -> int:
    """Trained trials whose parameters an earlier trained trial had (a retry of a failed try
    goes on where it stopped and is not one): 0 when repeats are answered from the store."""
    seen, twice = set(), 0
    for trial in sorted(trials, key=lambda t: t.number):
        if is_trained(trial):
            key = repr(sorted(trial.params.items()))
            twice += key in seen
            seen.add(key)
    return twice
