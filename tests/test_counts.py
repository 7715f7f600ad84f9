"""reports/counts.py: trials counted by how they ended, repeats apart from pruned trials."""
from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from reports.counts import Counts, count_trials
from reports.table import REPEAT_ATTR


def _trial(state, repeat_of=None):
    params = {"lr": 0.1} if state != TrialState.WAITING else {}
    return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                        params=params, distributions={"lr": FloatDistribution(0.0, 1.0)}
                        if params else {},
                        user_attrs={REPEAT_ATTR: repeat_of} if repeat_of is not None else {})


def test_repeats_are_counted_apart_and_the_counts_add_up_to_the_study():
    study = optuna.create_study(direction="maximize")
    made = [_trial(TrialState.COMPLETE), _trial(TrialState.COMPLETE),
            _trial(TrialState.COMPLETE, repeat_of=0), _trial(TrialState.PRUNED),
            _trial(TrialState.PRUNED, repeat_of=3), _trial(TrialState.FAIL),
            _trial(TrialState.WAITING)]
    for trial in made:
        study.add_trial(trial)
    counts = count_trials(study.get_trials(deepcopy=False))
    assert counts == Counts(complete=2, pruned=1, repeats=2, failed=1, waiting=1)
    assert counts.total == len(study.trials) == 7
    assert counts.trained == 3
    assert counts.summary() == ("2 complete, 1 pruned, 2 repeats (not trained), 1 failed, "
                                "1 queued: 7 trials")


def test_an_empty_study_says_so():
    assert count_trials([]).summary() == "no trials"
    assert Counts(complete=1).summary() == "1 complete: 1 trial"
