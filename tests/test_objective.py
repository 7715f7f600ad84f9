"""The objective on its own: a pruned trial really stops early, a diverging one ends PRUNED
with its reason, and a failing one keeps its reason (in-memory studies, synthetic data, mlp)."""
from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.objective
from reports.trial_data import trial_config, trial_curves, trial_value
from search.train.data import make_dataset
from search.objective import Objective, Runtime
from search.settings import StudySpec
from storage import Store, open_store

EPOCHS = 3
# adamw at 1e-3 learns the synthetic classes within an epoch; plain SGD at 1e-4 with batches
# of 1024 stays at chance (0.1) for many epochs: a clear loser for the median pruner.
GOOD = dict(batch_size=128, optimizer="adamw", lr=0.001, momentum=0.9, weight_decay=0.0001,
            activation="relu")
BAD = dict(batch_size=1024, optimizer="sgd", lr=0.0001, weight_decay=0.0001,
           activation="sigmoid")
CURVES = ("train_loss", "train_acc", "val_loss", "val_acc", "train_seconds", "val_seconds")


@pytest.fixture(scope="module")
def data():
    return make_dataset("synthetic")  # 1,800 train / 200 val / 500 test images


@pytest.fixture
def store(tmp_path) -> Store:
    return open_store(f"sqlite:///{tmp_path / 's.db'}", heartbeat=False)


def make_objective(store: Store, data, **spec) -> Objective:
    spec = StudySpec(**{"model": "mlp", "epochs": EPOCHS, **spec})
    return Objective(spec, Runtime(store, data, torch.device("cpu")))


def make_study(store: Store, pruner=None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=store.optuna, direction="maximize",
                               pruner=pruner or optuna.pruners.NopPruner())


def test_a_pruned_trial_stops_after_the_epoch_the_pruner_judged(store, data):
    # With one finished trial as reference and no warm-up, the median pruner judges epoch 1.
    study = make_study(store, optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.enqueue_trial(GOOD)
    study.enqueue_trial(BAD)
    study.optimize(make_objective(store, data), n_trials=2)
    good, bad = study.trials

    assert good.state == TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [1, 2, 3]  # reported once per epoch, 1-based
    assert trial_value(good, "epochs_run") == EPOCHS
    assert bad.intermediate_values[1] < good.intermediate_values[1]  # why it was pruned

    assert bad.state == TrialState.PRUNED
    assert bad.params == BAD  # the enqueued values, momentum not suggested for plain SGD
    assert trial_value(bad, "epochs_run") == 1 < EPOCHS
    assert list(bad.intermediate_values) == [1]
    assert all(len(trial_curves(bad)[name]) == 1 for name in CURVES)
    assert bad.user_attrs["max_val_acc"] == bad.intermediate_values[1]
    assert "test_acc" not in bad.user_attrs  # the test set is only for finished trials


def test_a_diverging_trial_ends_pruned_with_its_reason(store, data):
    study = make_study(store)
    study.enqueue_trial(dict(batch_size=128, weight_decay=0.0001, activation="relu"))
    objective = make_objective(store, data, fixed={"lr": 10.0, "optimizer": "sgd"})
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]

    assert trial.state == TrialState.PRUNED
    assert trial.params == dict(batch_size=128, weight_decay=0.0001, activation="relu")
    assert trial_config(trial)["lr"] == 10.0
    assert "became nan" in trial.user_attrs["diverged"] or "became inf" in \
        trial.user_attrs["diverged"]
    assert trial_value(trial, "epochs_run") < EPOCHS
    assert "fail_reason" not in trial.user_attrs


def test_an_error_inside_training_fails_that_trial_with_its_reason(store, data, monkeypatch):
    real_train = search.objective.train

    def train_out_of_memory_at_1024(model, config, *args, **kwargs):
        if config.batch_size == 1024:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return real_train(model, config, *args, **kwargs)

    monkeypatch.setattr(search.objective, "train", train_out_of_memory_at_1024)
    study = make_study(store)
    study.enqueue_trial(dict(GOOD, batch_size=1024))
    study.enqueue_trial(GOOD)
    study.optimize(make_objective(store, data, epochs=1), n_trials=2, catch=(Exception,))
    failed, finished = study.trials

    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert trial_config(failed)["batch_size"] == 1024
    assert finished.state == TrialState.COMPLETE
    assert "fail_reason" not in finished.user_attrs


def test_a_configuration_trained_already_is_answered_from_its_result(store, data, monkeypatch):
    """The same parameters twice (the second a certain repeat): the second trains nothing,
    returns the first's value for the sampler, and says whose repeat it is."""
    study = make_study(store)
    study.enqueue_trial(GOOD)
    study.enqueue_trial(GOOD, skip_if_exists=False)
    trained = []
    real_train = search.objective.train
    monkeypatch.setattr(search.objective, "train",
                        lambda *a, **k: trained.append(1) or real_train(*a, **k))
    study.optimize(make_objective(store, data, epochs=1), n_trials=2)
    first, repeat = study.trials
    assert len(trained) == 1
    assert repeat.state == TrialState.COMPLETE and repeat.value == first.value
    assert repeat.user_attrs == {"repeat_of": 0} and repeat.intermediate_values == {}


def test_a_repeat_of_a_pruned_configuration_is_pruned_without_training(store, data):
    study = make_study(store, optuna.pruners.ThresholdPruner(lower=2.0))  # prunes at epoch 1
    study.enqueue_trial(GOOD)
    study.enqueue_trial(GOOD, skip_if_exists=False)
    study.optimize(make_objective(store, data, epochs=2), n_trials=2)
    first, repeat = study.trials
    assert first.state == repeat.state == TrialState.PRUNED
    assert repeat.user_attrs == {"repeat_of": 0} and repeat.intermediate_values == {}


def falling_val_acc(values: dict[int, float], monkeypatch) -> None:
    """Train for real, but report the val acc of `values` by epoch (the pruner and the
    storage see these), so a trial's best epoch comes before its last for certain."""
    real_train = search.objective.train

    def train(model, config, *args, on_epoch, **kwargs):
        def judged(result):
            result.epochs[-1].val_acc = values[result.epochs[-1].epoch]
            return on_epoch(result)
        return real_train(model, config, *args, on_epoch=judged, **kwargs)

    monkeypatch.setattr(search.objective, "train", train)


def test_a_pruned_trials_page_says_its_value_is_its_last_epoch_and_names_its_best(
        store, data, monkeypatch):
    """Optuna values a pruned trial at its last epoch (0.3) while its reason and max_val_acc
    give its best (0.5): a line on its page says both; what Optuna records is unchanged."""
    falling_val_acc({1: 0.5, 2: 0.3}, monkeypatch)
    study = make_study(store, optuna.pruners.ThresholdPruner(lower=0.4))  # stops at 0.3
    study.enqueue_trial(GOOD)
    study.optimize(make_objective(store, data), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.value == 0.3   # Optuna's rule
    assert trial.user_attrs["max_val_acc"] == 0.5
    assert trial.user_attrs["value_note"] == ("Value 0.3 is epoch 2's val acc: Optuna keeps a "
                                              "pruned trial's last; its best: 0.5, epoch 1")
    assert len(trial.user_attrs["value_note"]) <= 100      # one line of the page's box


def test_a_pruned_trial_whose_last_epoch_is_its_best_needs_no_line(store, data, monkeypatch):
    falling_val_acc({1: 0.3, 2: 0.35}, monkeypatch)
    study = make_study(store, optuna.pruners.ThresholdPruner(lower=0.4))
    study.enqueue_trial(GOOD)
    study.optimize(make_objective(store, data), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and "value_note" not in trial.user_attrs


def test_the_trial_page_shows_rounded_results_the_model_size_and_a_curves_picture(store,
                                                                                    data):
    """What the dashboard's trial page shows: results to 4 significant digits (the reports
    read the full values), the model's size in words, and pictures of its curves."""
    import math
    from xml.etree import ElementTree
    from optuna.artifacts import download_artifact
    from reports.trial_data import FULL_RESULTS, PARAMETERS, artifact_id, significant

    study = make_study(store)
    study.enqueue_trial(GOOD)
    study.optimize(make_objective(store, data), n_trials=1)
    trial = study.trials[0]
    attrs = trial.user_attrs
    full = trial.system_attrs[FULL_RESULTS]
    assert set(full) == {"max_val_acc", "max_train_acc", "test_acc", "test_loss"}
    for name, value in full.items():
        assert attrs[name] == significant(value) == float(f"{value:.4g}"), name
        assert trial_value(trial, name) == value                 # reports: full precision
    assert full["test_loss"] != attrs["test_loss"]   # a loss has more than 4 digits
    digits = lambda v: len(f"{v:.10g}".lstrip("0.").replace(".", "").lstrip("0"))  # noqa
    assert all(digits(attrs[n]) <= 4 for n in full), attrs
    count = trial.system_attrs[PARAMETERS]
    assert attrs["model_size"] == f"{count:,} parameters" and "parameters" not in attrs
    assert trial_value(trial, "parameters") == count > 1000
    for name, what in (("acc_curves.svg", "accuracy"), ("loss_curves.svg", "loss")):
        picture = store.artifact_folder / name
        download_artifact(artifact_store=store.artifacts(), file_path=str(picture),
                          artifact_id=artifact_id(trial, name))
        svg = ElementTree.parse(picture).getroot()
        title = next(svg.iter("{http://www.w3.org/2000/svg}text")).text
        assert title.startswith(f"#0 {what}: val "), title
        assert len(list(svg.iter("{http://www.w3.org/2000/svg}polyline"))) == 2
        assert picture.stat().st_size < 5_000
    assert not math.isnan(full["test_loss"])
