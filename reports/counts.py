"""A study's trials counted by how they ended, the same way in every summary: the terminal's
last lines, `studies`, the report's header and the dashboard's study note.

A repeat (a configuration the study had trained already, answered from that trial's result:
search/objective.py) is stored COMPLETE or PRUNED like its original, but trained nothing, so
it is counted apart, never among the complete or pruned trials. The counts add up to the
study's number of trials, which is what optuna-dashboard lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from optuna.trial import FrozenTrial, TrialState

from reports.table import REPEAT_ATTR


@dataclass(frozen=True)
class Counts:
    complete: int = 0   # trained to their last epoch
    pruned: int = 0     # stopped early by the pruner (or a diverging loss)
    repeats: int = 0    # answered from a trained twin: nothing trained
    failed: int = 0     # an error or an interruption (an interrupted one is queued again)
    running: int = 0
    waiting: int = 0    # queued: retries, grid points, published rows

    @property
    def total(self) -> int:
        """Every trial of the study: the number optuna-dashboard shows."""
        return (self.complete + self.pruned + self.repeats + self.failed + self.running
                + self.waiting)

    @property
    def trained(self) -> int:
        """Finished trials that trained (complete + pruned): what a study's target counts."""
        return self.complete + self.pruned

    def summary(self) -> str:
        """'12 complete, 14 pruned, 2 repeats (not trained), 1 failed: 29 trials'."""
        parts = [f"{n} {name}" for n, name in (
            (self.complete, "complete"), (self.pruned, "pruned"),
            (self.repeats, "repeats (not trained)" if self.repeats != 1
             else "repeat (not trained)"),
            (self.failed, "failed"), (self.running, "running"), (self.waiting, "queued"))
            if n]
        total = f"{self.total} trial{'s' if self.total != 1 else ''}"
        return f"{', '.join(parts)}: {total}" if parts else "no trials"


def count_trials(trials: Iterable[FrozenTrial]) -> Counts:
    """Count trials (a study's `get_trials(deepcopy=False)`) by how they ended."""
    tally = dict.fromkeys(("complete", "pruned", "repeats", "failed", "running", "waiting"), 0)
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
             TrialState.FAIL: "failed", TrialState.RUNNING: "running",
             TrialState.WAITING: "waiting"}
    for trial in trials:
        finished = trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        tally["repeats" if finished and REPEAT_ATTR in trial.user_attrs
              else names[trial.state]] += 1
    return Counts(**tally)
