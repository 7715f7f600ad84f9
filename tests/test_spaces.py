"""spaces: what each search space suggests, fixed values, the wide flavour, value checking,
and the published rows that may be enqueued."""
from __future__ import annotations

import optuna
import pytest
from optuna.trial import FixedTrial

from spaces import Config, ConfigError, apply_overrides, get_space, parse_value
from spaces import mlpmixer as mixer_space
from spaces import resnet18 as resnet_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
MODELS = ("resnet18", "mlpmixer", "mlp")


def sampled(model: str, kind: str = "report", fixed: dict | None = None, n: int = 50):
    """(params, config) of n random trials of a model's space, seeded."""
    space, configs = get_space(model), []

    def objective(trial):
        configs.append(space.suggest(trial, fixed=fixed, kind=kind))
        return 0.0
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n)
    return [t.params for t in study.trials], configs


@pytest.mark.parametrize("model", MODELS)
def test_every_suggested_value_is_in_the_reports_lists(model):
    space = get_space(model)
    trials, configs = sampled(model)
    for params, config in zip(trials, configs):
        assert set(params) <= set(space.lists) | set(space.int_ranges)
        for name, value in params.items():
            if name in space.lists:
                assert value in space.lists[name], (name, value)
            else:
                low, high = space.int_ranges[name]
                assert low <= value <= high and isinstance(value, int)
            assert getattr(config, name) == value      # the config is built from the params
    for name in space.lists:                            # 50 draws explore every list
        if name != "momentum":
            assert len({p[name] for p in trials}) > 1


def test_momentum_is_suggested_only_for_optimizers_that_use_it():
    trials, _ = sampled("resnet18")
    assert {p["optimizer"] for p in trials} == {"sgd", "momentum", "adam", "adamw"}
    for params in trials:
        assert ("momentum" in params) == (params["optimizer"] != "sgd")
    # FixedTrial raises when a parameter it lacks is suggested: so none is, for plain SGD.
    plain = dict(batch_size=64, optimizer="sgd", lr=0.01, weight_decay=0.001)
    assert get_space("resnet18").suggest(FixedTrial(plain)).optimizer == "sgd"
    with pytest.raises(ValueError):
        get_space("resnet18").suggest(FixedTrial({**plain, "optimizer": "adam"}))


def test_fixed_trial_values_become_the_config():
    params = dict(batch_size=256, optimizer="adam", lr=0.0025, momentum=0.3,
                  weight_decay=0.0001, embed_dim=150, num_blocks=5, drop_rate=0.3)
    config = get_space("mlpmixer").suggest(FixedTrial(params))
    assert {k: getattr(config, k) for k in params} == params
    assert config.patch_size == 4 and config.epochs == Config().epochs


def test_mlpmixer_keeps_patch_size_4_unless_fixed():
    trials, configs = sampled("mlpmixer", n=20)
    assert {c.patch_size for c in configs} == {4}
    assert all("patch_size" not in p for p in trials)
    trials, configs = sampled("mlpmixer", fixed={"patch_size": 8}, n=5)
    assert {c.patch_size for c in configs} == {8}


def test_fixed_values_are_never_sampled():
    trials, configs = sampled("resnet18", fixed={"optimizer": "adam", "lr": 0.3}, n=10)
    assert all("optimizer" not in p and "lr" not in p and "momentum" in p for p in trials)
    assert {(c.optimizer, c.lr) for c in configs} == {("adam", 0.3)}


@pytest.mark.parametrize("model", ("resnet18", "mlpmixer"))
def test_wide_samples_lr_and_weight_decay_within_the_lists_span(model):
    space = get_space(model)
    trials, _ = sampled(model, kind="wide")
    for name in ("lr", "weight_decay", "momentum"):
        values = [p[name] for p in trials if name in p]
        low, high = min(space.lists[name]), max(space.lists[name])
        if name == "weight_decay":
            low = min(low, 2.5e-5)   # the report's best ResNet18 setting, below its list
        assert all(low <= v <= high for v in values), name
        assert any(v not in space.lists[name] for v in values)  # continuous, not the lists
    assert all(p["batch_size"] in space.lists["batch_size"] for p in trials)
    assert all(p["optimizer"] in space.lists["optimizer"] for p in trials)


@pytest.mark.parametrize("model", MODELS)
def test_wide_searches_the_schedule_and_label_smoothing_and_report_keeps_them(model):
    trials, configs = sampled(model, kind="wide")
    assert {p["schedule"] for p in trials} == {"constant", "cosine", "onecycle"}
    smoothing = [p["label_smoothing"] for p in trials]
    assert all(0.0 <= v <= 0.2 for v in smoothing) and len(set(smoothing)) > 40
    assert [c.schedule for c in configs] == [p["schedule"] for p in trials]
    trials, configs = sampled(model, kind="report", n=10)
    assert all("schedule" not in p and "label_smoothing" not in p for p in trials)
    assert {(c.schedule, c.label_smoothing) for c in configs} == {("constant", 0.0)}
    # --set schedule=onecycle applies to every model and is never sampled then.
    trials, configs = sampled(model, kind="wide", fixed={"schedule": "onecycle"}, n=5)
    assert all("schedule" not in p for p in trials)
    assert {c.schedule for c in configs} == {"onecycle"}
    get_space(model).check_names(["schedule", "label_smoothing"])


def test_wide_weight_decay_reaches_the_reports_best_resnet_setting():
    space = get_space("resnet18")
    best = resnet_space.PUBLISHED_TOP[1]        # adam, weight decay 2.5e-05, test 0.8911
    assert best["weight_decay"] == 2.5e-5 and best["test_acc"] == 0.8911
    params = {k: v for k, v in best.items() if k in space.lists}
    assert not space.fits(params, "report") and space.fits(params, "wide")
    wide = space.enqueue_params("wide")
    assert {**params, "schedule": "constant", "label_smoothing": 0.0} in wide
    assert len(wide) > len(space.enqueue_params("report"))
    for row in wide:   # each is a valid point of the wide space, at the report's training
        config = space.suggest(FixedTrial(row), kind="wide")
        assert (config.schedule, config.label_smoothing) == ("constant", 0.0)


@pytest.mark.parametrize("name, text, value", [
    ("lr", "0.3", 0.3), ("batch_size", "32", 32), ("momentum", "0.95", 0.95),
    ("weight_decay", "1e-5", 1e-5), ("drop_rate", "0", 0.0), ("embed_dim", "512", 512),
    ("patch_size", "2", 2), ("optimizer", "Adam", "adam"), ("hidden_sizes", "128,64", (128, 64)),
    ("schedule", "OneCycle", "onecycle"), ("schedule", "cosine", "cosine"),
    ("label_smoothing", "0.1", 0.1),
])
def test_set_values_outside_the_lists_are_accepted_when_sane(name, text, value):
    parsed = parse_value(name, text)
    assert parsed == value
    assert getattr(apply_overrides(Config(), {name: parsed}), name) == value


@pytest.mark.parametrize("name, text, message", [
    ("lr", "abc", "expected a number"),
    ("lr", "inf", "expected a number"),
    ("batch_size", "12.5", "expected an integer"),
    ("size", "3", "unknown parameter 'size'"),
])
def test_ill_typed_or_unknown_values_raise_config_error(name, text, message):
    with pytest.raises(ConfigError, match=message):
        parse_value(name, text)


@pytest.mark.parametrize("changes, message", [
    ({"lr": -0.1}, "lr=-0.1: must be a positive number"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"momentum": 1.0}, r"momentum=1.0: must be in \[0, 1\)"),
    ({"patch_size": 5}, "must divide the 32-pixel image side"),
    ({"optimizer": "rmsprop"}, "must be one of sgd, momentum, adam, adamw"),
    ({"activation": "swish"}, "activation='swish'"),
    ({"drop_rate": 1.0}, "drop_rate"),
    ({"hidden_sizes": ()}, "hidden_sizes"),
    ({"schedule": "foo"}, "^schedule='foo': must be one of constant, cosine, onecycle$"),
    ({"label_smoothing": 1.0}, r"label_smoothing=1.0: must be in \[0, 1\)"),
    ({"label_smoothing": -0.1}, "label_smoothing"),
])
def test_insane_values_raise_config_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), changes)


def test_parameters_of_another_model_are_refused():
    with pytest.raises(ConfigError, match="'activation' does not apply to resnet18"):
        get_space("resnet18").check_names(["activation"])
    get_space("mlp").check_names(["activation", "hidden_sizes", "epochs"])
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        get_space("vgg")


def test_enqueue_params_returns_only_published_rows_that_fit():
    resnet = get_space("resnet18")
    rows = resnet.enqueue_params("report")
    # Five of the eight published rows use weight decay 2.5e-05, which is not in the list.
    assert len(rows) == 3
    for row in rows:
        assert resnet.fits(row)
        assert all(row[name] in resnet.lists[name] for name in row)
        assert ("momentum" in row) == (row["optimizer"] != "sgd")
        config = resnet.suggest(FixedTrial(row))      # exactly what a trial would suggest
        assert {k: getattr(config, k) for k in row} == row
    assert not resnet.fits(resnet_space.PUBLISHED_TOP[1])  # weight decay 2.5e-05
    assert not resnet.fits({"batch_size": 32})


def test_enqueue_params_for_the_mixer_grow_with_the_wide_space():
    space = get_space("mlpmixer")
    report, wide = space.enqueue_params("report"), space.enqueue_params("wide")
    # Report lists: only row 1 fits (the others use batch 32, drop 0.0, momentum 0.85/0.95 or
    # weight decays off the list); the wide space also admits row 4's momentum 0.85.
    assert report == [{k: v for k, v in mixer_space.PUBLISHED_TOP[0].items()
                       if k in space.lists or k in space.int_ranges}]
    training = {"schedule": "constant", "label_smoothing": 0.0}   # the report's own training
    assert len(wide) == 2 and {**report[0], **training} in wide
    assert any(row["momentum"] == 0.85 for row in wide)
    for row in wide:
        space.suggest(FixedTrial(row), kind="wide")  # each row is a valid point of the space


def test_grid_suggests_only_the_grid_parameters():
    trial = FixedTrial({"lr": 0.1})
    config = get_space("resnet18").suggest(trial, fixed={"optimizer": "adam"},
                                           grid={"lr": [0.1, 0.01]})
    assert (config.lr, config.optimizer, config.batch_size) == (0.1, "adam", Config().batch_size)


def test_numeric_choices_are_suggested_in_ascending_order_but_a_studys_own_order_is_kept():
    """optuna-dashboard draws a categorical choice at its index: ascending choices, ascending
    axes. A study begun with another order keeps it (Optuna refuses a reordering)."""
    space = get_space("resnet18")
    study = optuna.create_study()
    study.optimize(lambda trial: space.suggest(trial).lr, n_trials=3)
    distributions = study.trials[0].distributions
    for name in ("batch_size", "lr", "weight_decay"):
        choices = list(distributions[name].choices)
        assert choices == sorted(choices) and set(choices) == set(space.lists[name]), name
    assert list(distributions["optimizer"].choices) == list(space.lists["optimizer"])

    older = optuna.create_study()  # made by a version that suggested the lists as written
    older.optimize(lambda trial: trial.suggest_categorical("lr", list(space.lists["lr"])),
                   n_trials=1)
    older.optimize(lambda trial: space.suggest(trial).lr, n_trials=3)
    assert all(t.state.name == "COMPLETE" for t in older.trials)  # no "dynamic value space"
    assert {t.distributions["lr"].choices for t in older.trials} == {space.lists["lr"]}
