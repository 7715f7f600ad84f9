"""search.study without training: samplers and pruners as recorded, the spec written once and
checked, the target, grid points queued once, a seed per run, the report's published rows as
warm starts."""
from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from search.errors import StudyMismatch
from search.settings import RunSettings, StudySpec
from spaces import SPACES, get_space
from reports.study_data import study_record
from storage import open_store
from search.study import (MAX_TRIES, TARGET_ATTR, enqueue_published, grid_failures,
                          load_spec, make_pruner, make_sampler, open_study, queue_grid_points,
                          recorded_spec, run_seed)

# The rows of the report's Table 1 whose values all lie in ResNet18's lists (the others use
# weight decay 2.5e-5); plain SGD has no momentum to suggest.
RESNET18_ROWS = [
    dict(batch_size=512, lr=0.001, optimizer="adamw", momentum=0.6, weight_decay=0.00075),
    dict(batch_size=64, lr=0.0075, optimizer="sgd", weight_decay=0.00075),
    dict(batch_size=512, lr=0.0001, optimizer="adamw", momentum=0.9, weight_decay=0.0075),
]
GRID = {"activation": ["relu", "sigmoid", "tanh"]}


def waiting_params(study: optuna.Study) -> list[dict]:
    return [t.system_attrs["fixed_params"]
            for t in study.get_trials(states=(TrialState.WAITING,))]


def settings(tmp_path, **spec) -> RunSettings:
    return RunSettings(spec=StudySpec(**{"model": "mlp", **spec}),
                       storage=f"sqlite:///{tmp_path}/s.db")


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_tpe_is_seeded_and_its_pinned_settings_are_recorded():
    sampler, recorded = make_sampler(StudySpec(model="mlp"), seed=7)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert recorded == dict(name="tpe", n_startup_trials=10, n_ei_candidates=24,
                            multivariate=True, constant_liar=True, group=False)


@pytest.mark.parametrize("name, kind", [("random", optuna.samplers.RandomSampler),
                                        ("gp", optuna.samplers.GPSampler)])
def test_random_and_gp_samplers(name, kind):
    sampler, recorded = make_sampler(StudySpec(model="mlp", sampler=name), seed=2)
    assert isinstance(sampler, kind) and recorded == {"name": name}


@pytest.mark.parametrize("epochs, warmup", [(30, 5), (10, 2), (2, 1)])
def test_the_median_pruner_waits_a_fifth_of_the_epochs_at_most_5(epochs, warmup):
    pruner, recorded = make_pruner(StudySpec(model="mlp", epochs=epochs))
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert recorded == dict(name="median", n_startup_trials=5, n_warmup_steps=warmup,
                            interval_steps=1)


def test_hyperband_spans_the_epochs_and_none_never_prunes():
    pruner, recorded = make_pruner(StudySpec(model="mlp", pruner="hyperband", epochs=9))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert recorded["max_resource"] == 9
    pruner, recorded = make_pruner(StudySpec(model="mlp", pruner="none"))
    assert isinstance(pruner, optuna.pruners.NopPruner) and recorded == {"name": "none"}


def test_each_run_samples_with_its_own_reproducible_seed():
    seeds = [run_seed(0, run) for run in range(1, 6)]
    assert len(set(seeds)) == 5 and seeds == [run_seed(0, run) for run in range(1, 6)]
    assert run_seed(1, 1) != run_seed(0, 1)


def test_open_study_records_its_spec_in_one_attribute_names_its_metric_and_counts_runs(tmp_path):
    first = open_study(settings(tmp_path, fixed={"optimizer": "adam"}, epochs=3))
    study = first.study
    assert recorded_spec(study) == StudySpec(model="mlp", fixed={"optimizer": "adam"}, epochs=3)
    assert study_record(study)["sampler"]["name"] == "tpe"
    assert "optuna_search" not in study.user_attrs    # not in the dashboard's study card
    assert study.metric_names == ["val_acc"]
    assert study.user_attrs[TARGET_ATTR] == 30        # a new study's default target
    second = open_study(settings(tmp_path, fixed={"optimizer": "adam"}, epochs=3))
    assert (first.run, second.run) == (1, 2) and first.sampler_seed != second.sampler_seed
    assert first.uid == second.uid                     # made once, with the study
    store = open_store(settings(tmp_path).storage, readonly=True)
    assert load_spec(store, "mlp") == recorded_spec(study)


def test_a_run_with_another_spec_is_refused_naming_each_difference(tmp_path):
    open_study(settings(tmp_path, epochs=1, train_subset=100))
    with pytest.raises(StudyMismatch) as error:
        open_study(settings(tmp_path, epochs=3))
    message = str(error.value)
    assert "epochs 3 (asked) vs 1 (study)" in message
    assert "train_subset none (asked) vs 100 (study)" in message
    assert "--study NEW-NAME" in message and "\n" not in message


def test_a_study_interrupted_while_being_made_is_completed_by_the_next_run(tmp_path):
    url = settings(tmp_path).storage
    optuna.create_study(study_name="mlp", storage=url, direction="maximize")  # no spec yet
    opened = open_study(settings(tmp_path))
    assert recorded_spec(opened.study) == StudySpec(model="mlp")


def test_trials_set_the_target_and_without_it_the_study_keeps_its_own(tmp_path):
    study = open_study(settings(tmp_path).replace(trials=6)).study
    assert study.user_attrs[TARGET_ATTR] == 6
    open_study(settings(tmp_path))                        # no --trials: keep 6
    assert study.user_attrs[TARGET_ATTR] == 6
    open_study(settings(tmp_path).replace(trials=10))     # a larger N extends the study
    assert study.user_attrs[TARGET_ATTR] == 10


def test_grid_points_are_queued_once_however_often_the_study_is_opened(tmp_path):
    for _ in range(3):
        study = open_study(settings(tmp_path, grid=GRID)).study
    assert waiting_params(study) == [{"activation": a} for a in GRID["activation"]]


def test_a_grid_point_that_failed_is_queued_again_until_its_tries_are_used(tmp_path):
    opened = open_study(settings(tmp_path, grid=GRID))
    study = opened.study
    spec = recorded_spec(study)
    # Fail every sigmoid trial: each reopening queues it again, MAX_TRIES times in all.
    for attempt in range(MAX_TRIES + 1):
        for trial_id in [t._trial_id for t in study.get_trials(states=(TrialState.WAITING,))]:
            trial = study.ask()
            value = trial.suggest_categorical("activation", GRID["activation"])
            study.tell(trial, None if value == "sigmoid" else 1.0,
                       state=TrialState.FAIL if value == "sigmoid" else TrialState.COMPLETE)
        queue_grid_points(study, spec)
    sigmoid = [t for t in study.trials if t.params.get("activation") == "sigmoid"]
    assert len(sigmoid) == MAX_TRIES and all(t.state == TrialState.FAIL for t in sigmoid)
    assert grid_failures(study, spec) == [{"activation": "sigmoid"}]
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_the_published_rows_that_fit_are_enqueued_once():
    study = optuna.create_study(direction="maximize")
    spec = StudySpec(model="resnet18")
    assert enqueue_published(study, spec) == 3
    assert waiting_params(study) == RESNET18_ROWS
    enqueue_published(study, spec)  # a resumed search enqueues nothing twice
    assert len(study.trials) == 3


def test_published_rows_that_contradict_set_values_are_left_out():
    study = optuna.create_study(direction="maximize")
    assert enqueue_published(study, StudySpec(model="resnet18",
                                              fixed={"optimizer": "adamw"})) == 2
    adamw_rows = [{k: v for k, v in row.items() if k != "optimizer"}
                  for row in RESNET18_ROWS if row["optimizer"] == "adamw"]
    assert waiting_params(study) == adamw_rows  # optimizer is --set, not a parameter
    study = optuna.create_study(direction="maximize")
    assert enqueue_published(study, StudySpec(model="resnet18", fixed={"optimizer": "adam"})) == 0


@pytest.mark.parametrize("model, space, count", [("mlpmixer", "report", 1),
                                                 ("mlpmixer", "wide", 2), ("mlp", "report", 0)])
def test_published_rows_per_model_and_space(model, space, count):
    study = optuna.create_study(direction="maximize")
    assert enqueue_published(study, StudySpec(model=model, space=space)) == count


def test_joining_a_study_that_is_not_there_or_not_ours_is_refused(tmp_path):
    url = settings(tmp_path).storage
    joined = settings(tmp_path).replace(join=True)
    with pytest.raises(StudyMismatch, match="no study 'mlp'"):
        open_study(joined)
    optuna.create_study(study_name="mlp", storage=url)
    with pytest.raises(StudyMismatch, match="records no optuna-search settings"):
        open_study(joined)


def test_a_list_changed_under_a_study_is_refused_with_a_line_naming_it(tmp_path, monkeypatch,
                                                                        capsys):
    """The spec records the space's lists: editing one (here the MLP's learning rates) under
    an existing study is bad input, one line naming the list, not a failure of every trial
    (Optuna's "dynamic value space" error)."""
    from helpers import TINY
    from search.cli import main
    url = f"sqlite:///{tmp_path / 's.db'}"
    command = ["mlp", "--trials", "1", "--epochs", "1", "--storage", url, *TINY]
    assert main(command) == 0
    mlp = get_space("mlp")
    edited = dataclasses.replace(mlp, lists={**mlp.lists, "lr": (0.1, 0.01)})
    monkeypatch.setitem(SPACES, "mlp", edited)
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the lr list 0.1,0.01 (asked) vs 0.01,0.025" in err[0], err
    monkeypatch.setitem(SPACES, "mlp", mlp)            # the lists it was made with: resumes
    assert main([*command[:2], "2", *command[3:]]) == 0
