"""Why the pruner stopped a trial, in words, with the numbers it compared: the pruned trial's
line and its `prune_reason` attribute ("pruned at epoch 3: best val acc 0.4100 < median
0.5200 of 5 complete trials at epoch 3").

Optuna's MedianPruner (search/study.py makes it) stops a trial at epoch e when the best value
it reported so far is worse than the median of the values the COMPLETE trials reported at
epoch e (after its n_startup_trials and n_warmup_steps; NaN values left out). The threshold is
recomputed here the same way, right after the pruner said yes, from the same storage. Other
pruners (Hyperband: the top 1/reduction_factor of a rung go on) are named with the value
they judged.
"""
from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

PRUNE_REASON = "prune_reason"   # the user attribute holding the sentence


def why_pruned(study: optuna.Study, trial: FrozenTrial) -> str:
    """The sentence for `trial` (as stored when the pruner judged it) pruned by the study's
    pruner at its last reported epoch."""
    epoch = trial.last_step
    maximize = study.direction == StudyDirection.MAXIMIZE
    reported = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
    head = f"pruned at epoch {epoch}"
    if not reported:
        return f"{head}: val acc is NaN"
    best = max(reported) if maximize else min(reported)
    pruner = study.pruner
    if isinstance(pruner, optuna.pruners.MedianPruner):
        at_epoch = [t.intermediate_values[epoch]
                    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if epoch in t.intermediate_values]
        if at_epoch and not np.isnan(at_epoch).all():
            median = float(np.nanmedian(at_epoch))
            return (f"{head}: best val acc {best:.4f} {'<' if maximize else '>'} median "
                    f"{median:.4f} of {len(at_epoch)} complete trials")
    latest = trial.intermediate_values[epoch]
    if isinstance(pruner, optuna.pruners.HyperbandPruner):  # successive halving per bracket
        return f"{head} by hyperband: val acc {latest:.4f} not among its rung's best"
    return f"{head} by {type(pruner).__name__}: val acc {latest:.4f}"
