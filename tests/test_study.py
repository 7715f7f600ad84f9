"""search.study without training: samplers and pruners as recorded, default study names, the
report's published rows as warm starts, failed grid points queued again, listing studies, and
Ctrl-C arriving outside the objective."""
from __future__ import annotations

import io
import os
import signal

import optuna
import pytest
from optuna.storages._heartbeat import HeartbeatThread
from optuna.trial import TrialState

from search.study import (SearchSettings, default_study_name, enqueue_published, list_studies,
                          make_pruner, make_sampler, open_study, remaining_grid_points,
                          requeue_failed_grid_points, run_search)

# The rows of the report's Table 1 whose values all lie in ResNet18's lists (the others use
# weight decay 2.5e-5); plain SGD has no momentum to suggest.
RESNET18_ROWS = [
    dict(batch_size=512, lr=0.001, optimizer="adamw", momentum=0.6, weight_decay=0.00075),
    dict(batch_size=64, lr=0.0075, optimizer="sgd", weight_decay=0.00075),
    dict(batch_size=512, lr=0.0001, optimizer="adamw", momentum=0.9, weight_decay=0.0075),
]


def waiting_params(study: optuna.Study) -> list[dict]:
    return [t.system_attrs["fixed_params"]
            for t in study.get_trials(states=(TrialState.WAITING,))]


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_tpe_is_seeded_and_its_pinned_settings_are_recorded():
    sampler, recorded = make_sampler(SearchSettings(model="mlp", seed=7))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert recorded == dict(name="tpe", seed=7, n_startup_trials=10, n_ei_candidates=24,
                            multivariate=True, constant_liar=True, group=False)


@pytest.mark.parametrize("name, kind", [("random", optuna.samplers.RandomSampler),
                                        ("gp", optuna.samplers.GPSampler)])
def test_random_and_gp_samplers(name, kind):
    sampler, recorded = make_sampler(SearchSettings(model="mlp", sampler=name, seed=2))
    assert isinstance(sampler, kind) and recorded == {"name": name, "seed": 2}


def test_a_grid_overrides_the_sampler():
    grid = {"activation": ["relu", "tanh"]}
    sampler, recorded = make_sampler(SearchSettings(model="mlp", sampler="random", grid=grid))
    assert isinstance(sampler, optuna.samplers.GridSampler) and recorded["name"] == "grid"


@pytest.mark.parametrize("epochs, warmup", [(30, 5), (10, 2), (2, 1)])
def test_the_median_pruner_waits_a_fifth_of_the_epochs_at_most_5(epochs, warmup):
    pruner, recorded = make_pruner(SearchSettings(model="mlp", epochs=epochs))
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert recorded == dict(name="median", n_startup_trials=5, n_warmup_steps=warmup,
                            interval_steps=1)


def test_hyperband_spans_the_epochs_and_none_never_prunes():
    pruner, recorded = make_pruner(SearchSettings(model="mlp", pruner="hyperband", epochs=12,
                                                  fixed={"epochs": 9}))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert recorded["max_resource"] == 9  # --set epochs wins over --epochs
    pruner, recorded = make_pruner(SearchSettings(model="mlp", pruner="none"))
    assert isinstance(pruner, optuna.pruners.NopPruner) and recorded == {"name": "none"}


def test_default_study_names():
    assert default_study_name("resnet18", {"optimizer": "adam"}, None) == "resnet18"
    assert default_study_name("resnet18", {"optimizer": "adam", "epochs": 5},
                              {"lr": [0.1, 0.01]}) == "resnet18-optimizer=adam-grid-lr"
    assert default_study_name("mlpmixer", {}, {"patch_size": [4, 8], "lr": [0.1]}) == \
        "mlpmixer-grid-lr-patch_size"


def test_the_published_rows_that_fit_are_enqueued_once():
    study = optuna.create_study(direction="maximize")
    settings = SearchSettings(model="resnet18")
    assert enqueue_published(study, settings) == 3
    assert waiting_params(study) == RESNET18_ROWS
    enqueue_published(study, settings)  # a resumed search enqueues nothing twice
    assert len(study.trials) == 3


def test_published_rows_that_contradict_set_values_are_left_out():
    study = optuna.create_study(direction="maximize")
    assert enqueue_published(study, SearchSettings(model="resnet18",
                                                   fixed={"optimizer": "adamw"})) == 2
    adamw_rows = [{k: v for k, v in row.items() if k != "optimizer"}
                  for row in RESNET18_ROWS if row["optimizer"] == "adamw"]
    assert waiting_params(study) == adamw_rows  # optimizer is --set, not a parameter
    study = optuna.create_study(direction="maximize")
    assert enqueue_published(study, SearchSettings(model="resnet18",
                                                   fixed={"optimizer": "adam"})) == 0


@pytest.mark.parametrize("model, space, count", [("mlpmixer", "report", 1),
                                                 ("mlpmixer", "wide", 2), ("mlp", "report", 0)])
def test_published_rows_per_model_and_space(model, space, count):
    study = optuna.create_study(direction="maximize")
    assert enqueue_published(study, SearchSettings(model=model, space=space)) == count


def test_failed_grid_points_are_queued_again_with_their_grid_id():
    grid = {"activation": ["relu", "sigmoid", "tanh"]}
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.GridSampler(grid, seed=0))

    def objective(trial):
        activation = trial.suggest_categorical("activation", grid["activation"])
        if activation == "sigmoid" and len(study.trials) < 4:
            raise RuntimeError("out of memory")  # fails the first time only
        return 1.0

    study.optimize(objective, n_trials=3, catch=(RuntimeError,))
    assert remaining_grid_points(study, grid) == 1
    assert requeue_failed_grid_points(study, grid) == 1
    assert requeue_failed_grid_points(study, grid) == 0  # already waiting
    study.optimize(objective, n_trials=1)
    last = study.trials[-1]
    assert (last.params, last.state) == ({"activation": "sigmoid"}, TrialState.COMPLETE)
    assert remaining_grid_points(study, grid) == 0


def test_open_study_records_its_identity_and_list_studies_counts_states(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    study = open_study(SearchSettings(model="mlp", storage=url, fixed={"optimizer": "adam"}))
    assert {k: study.user_attrs[k] for k in ("model", "space", "fixed", "grid", "seed", "data")} \
        == dict(model="mlp", space="report", fixed={"optimizer": "adam"}, grid=None, seed=0,
                data="cifar10")
    study.add_trial(optuna.trial.create_trial(
        value=0.5, params={"lr": 0.001},
        distributions={"lr": optuna.distributions.CategoricalDistribution([0.001, 0.01])}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    table = list_studies(url)
    assert table.to_dict("records") == [dict(study="mlp", model="mlp", complete=1, pruned=0,
                                             fail=1, running=0, waiting=0, best_val_acc=0.5)]


@pytest.mark.parametrize("where", ["ask", "heartbeat"])
def test_ctrl_c_outside_training_leaves_nothing_running(where, tmp_path, monkeypatch, capsys):
    """Ctrl-C just after Optuna made the trial RUNNING (a busy machine widens this window):
    raised there, it left the trial RUNNING, or the heartbeat thread alive and the process
    unable to exit. Now the trial fails before training and the search stops with 130."""
    started = []
    if where == "ask":
        ask = optuna.study.Study.ask

        def ask_then_interrupt(self, *args, **kwargs):
            trial = ask(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)
            return trial
        monkeypatch.setattr(optuna.study.Study, "ask", ask_then_interrupt)
    else:
        start = HeartbeatThread.start

        def start_then_interrupt(self):
            start(self)
            started.append(self)
            os.kill(os.getpid(), signal.SIGINT)
        monkeypatch.setattr(HeartbeatThread, "start", start_then_interrupt)

    url = f"sqlite:///{tmp_path}/s.db"
    try:
        code = run_search(SearchSettings(model="mlp", trials=3, storage=url, epochs=1,
                                         data="synthetic"), out=io.StringIO())
    finally:
        leaked = [beat for beat in started if beat._thread.is_alive()]
        for beat in leaked:
            beat.join()  # stop it, or it would keep pytest from exiting
    assert code == 130 and not leaked
    assert "Resume with the same command" in capsys.readouterr().err
    trials = optuna.load_study(study_name="mlp", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert "curves" not in trials[0].user_attrs  # it never trained
