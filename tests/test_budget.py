"""reports/budget.py: the epochs a study spent (pruned trials' up to their prune, failed tries',
a retry's without the epochs it inherited, repeats 0), what pruning saved, the anytime points,
the epochs to reach a target; and the report's epochs-saved line checked against the trials'
own epochs in a real pruned search."""
from __future__ import annotations

import datetime
import html

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from reports.budget import (anytime, best_at, budget_line, epochs_to_reach, own_epochs,
                            study_budget, trained_twice)
from reports.page import render_report
from reports.table import REPEAT_ATTR
from reports.trial_data import CONFIG
from search.cli import main

from helpers import TINY, load

optuna.logging.set_verbosity(optuna.logging.WARNING)
START = datetime.datetime(2026, 1, 1)


def trial(number, state, lr, epochs_reported, *, ended_s, took_s=10.0, value=None,
          repeat_of=None, retries=None, configured=10, inherited_from=None):
    """A trial that ended `ended_s` seconds after START, having run `took_s` seconds."""
    values = {e: 0.1 + 0.01 * e for e in range(1, epochs_reported + 1)}
    system = {CONFIG: {"epochs": configured, "lr": lr}}
    if retries is not None:
        system["retry_history"] = retries
    return FrozenTrial(
        number=number, trial_id=number, state=state, value=value,
        datetime_start=START + datetime.timedelta(seconds=ended_s - took_s),
        datetime_complete=START + datetime.timedelta(seconds=ended_s),
        params={"lr": lr}, distributions={"lr": CategoricalDistribution([0.1, 0.2, 0.3, 0.4])},
        user_attrs={REPEAT_ATTR: repeat_of} if repeat_of is not None else {},
        system_attrs=system, intermediate_values=values)


def a_study():
    """0 complete (10 epochs, 0.40), 1 pruned after 3, 2 a repeat of 0, 3 failed after 4,
    4 its retry (inherits 4, trains 6 more, complete 0.55), 5 pruned after 1."""
    trials = [
        trial(0, TrialState.COMPLETE, 0.1, 10, ended_s=100, value=0.40),
        trial(1, TrialState.PRUNED, 0.2, 3, ended_s=130),
        trial(2, TrialState.COMPLETE, 0.1, 0, ended_s=131, took_s=0.5, value=0.40,
              repeat_of=0),
        trial(3, TrialState.FAIL, 0.3, 4, ended_s=170),
        trial(4, TrialState.COMPLETE, 0.3, 10, ended_s=240, took_s=60, value=0.55,
              retries=[3]),
        trial(5, TrialState.PRUNED, 0.4, 1, ended_s=250),
    ]
    study = optuna.create_study(direction="maximize")
    for made in trials:
        study.add_trial(made)
    return study


def test_each_trial_counts_the_epochs_it_trained_itself():
    trials = a_study().get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert [own_epochs(t, by_number) for t in trials] == [10, 3, 0, 4, 6, 1]


def test_the_budget_and_its_line_add_up_from_the_trials():
    study = a_study()
    budget = study_budget(study.get_trials(deepcopy=False))
    # trained: 10 + 3 + 4 + 6 + 1; to the end: 10 + 10 + 10 (the retry) + 10 (pruned)
    assert (budget.trained_epochs, budget.full_epochs) == (24, 40)
    assert budget.saved_epochs == (10 - 3) + (10 - 1)          # the pruned trials' rest
    assert (budget.trained_trials, budget.repeats) == (4, 1)
    assert budget_line(study) == (
        "Epochs trained: 24 (running all 4 trained trials to the end would cost 40: pruning "
        "saved 16, 40%); 1 repeat answered from the store (0 epochs).")


def test_anytime_points_follow_the_order_trials_ended_with_the_incumbents_best():
    points = anytime(a_study().get_trials(deepcopy=False))
    assert [p.trial for p in points] == [0, 1, 2, 3, 4, 5]
    assert [p.epochs for p in points] == [10, 13, 13, 17, 23, 24]
    assert [p.seconds for p in points] == [10, 20, 20.5, 30.5, 90.5, 100.5]
    assert [p.best for p in points] == [0.40, 0.40, 0.40, 0.40, 0.55, 0.55]
    assert epochs_to_reach(points, 0.5) == 23 and epochs_to_reach(points, 0.6) is None
    assert best_at(points, 9) is None and best_at(points, 22) == 0.40
    assert best_at(points, 1000) == 0.55 and best_at(points, 95, axis="seconds") == 0.55


def test_a_configuration_trained_twice_is_counted_and_a_repeat_or_retry_is_not():
    study = a_study()
    assert trained_twice(study.get_trials(deepcopy=False)) == 0
    study.add_trial(trial(6, TrialState.COMPLETE, 0.2, 10, ended_s=300, value=0.3))
    assert trained_twice(study.get_trials(deepcopy=False)) == 1   # trial 1's lr, trained again


def test_an_empty_study_has_no_points_and_a_short_line():
    study = optuna.create_study()
    assert anytime(study.trials) == [] and best_at([], 5) is None
    assert budget_line(study) == "Epochs trained: 0; 0 repeats answered from the store (0 epochs)."


def test_the_reports_epochs_line_matches_the_trials_own_epochs(tmp_path, capsys):
    """A real search with median pruning: the Markdown report's first line and the HTML
    header give the epochs the trials recorded (each one's epochs_run), and pruning's saving
    is each pruned trial's configured epochs minus those it ran."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    argv = ["mlp", "--trials", "8", "--epochs", "4", *TINY, "--pruner", "median",
            "--storage", url, "--quiet"]
    # median pruning from epoch 1 after 5 complete trials (tiny: epochs // 5 = 0 -> 1)
    assert main(argv) == 0
    trials = load(tmp_path / "t.db").get_trials()
    trained = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               and REPEAT_ATTR not in t.user_attrs]
    ran = [t.system_attrs["optuna_search:epochs_run"] for t in trained]
    pruned = [t for t in trained if t.state == TrialState.PRUNED]
    repeats = sum(REPEAT_ATTR in t.user_attrs for t in trials)
    saved = sum(4 - t.system_attrs["optuna_search:epochs_run"] for t in pruned)
    capsys.readouterr()
    assert main(["report", "mlp", "--storage", url]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"Epochs trained: {sum(ran)} (running all {len(trained)} trained trials "
                     f"to the end would cost {4 * len(trained)}: pruning saved {saved}, "
                     f"{100 * saved / (4 * len(trained)):.0f}%); {repeats} repeat"
                     f"{'s' if repeats != 1 else ''} answered from the store (0 epochs).")
    assert pruned and len(trained) == 8      # seeded: the same trials every run
    page = render_report(url, "mlp", fmt="html")
    label, _, said = first.partition(": ")   # on the page: "<b>Epochs trained:</b> ..."
    assert f"<li><b>{label}:</b> {html.escape(said)}</li>" in page
