"""search.settings: the spec a study is made of, as JSON and back, its differences, its grid
points and its default name; resolved from the command line once (epochs included)."""
from __future__ import annotations

import pytest

from search.cli.arguments import UsageError, build_parser, run_settings, study_spec
from search.settings import StudySpec


def spec_of(*argv: str) -> StudySpec:
    return study_spec(build_parser().parse_args(list(argv)))


def test_a_spec_survives_json_with_tuples_and_grids():
    spec = StudySpec(model="mlp", fixed={"hidden_sizes": (16, 8)}, grid={"lr": [0.1, 0.01]},
                     epochs=3, train_subset=100)
    assert StudySpec.from_json(spec.as_json()) == spec
    assert spec.as_json()["fixed"] == {"hidden_sizes": [16, 8]}


def test_differences_name_the_field_and_both_values():
    ours, theirs = StudySpec(model="mlp", epochs=3), StudySpec(model="mlp", epochs=1, seed=2)
    assert ours.differences(theirs) == ["epochs 3 (asked) vs 1 (study)",
                                        "seed 0 (asked) vs 2 (study)"]
    assert ours.differences(ours) == []


def test_grid_points_are_every_combination():
    spec = StudySpec(model="mlp", grid={"activation": ["relu", "tanh"], "lr": [0.1, 0.01]})
    assert spec.grid_points == [{"activation": "relu", "lr": 0.1},
                                {"activation": "relu", "lr": 0.01},
                                {"activation": "tanh", "lr": 0.1},
                                {"activation": "tanh", "lr": 0.01}]
    assert StudySpec(model="mlp").grid_points == []


def test_default_study_names():
    assert StudySpec(model="resnet18", fixed={"optimizer": "adam"}).default_study_name() \
        == "resnet18"
    assert StudySpec(model="resnet18", fixed={"optimizer": "adam"}, epochs=5,
                     grid={"lr": [0.1, 0.01]}).default_study_name() \
        == "resnet18-optimizer=adam-grid-lr"
    assert StudySpec(model="mlpmixer", grid={"patch_size": [4, 8], "lr": [0.1]}) \
        .default_study_name() == "mlpmixer-grid-lr-patch_size"


def test_epochs_are_resolved_once_from_either_option():
    assert spec_of("mlp").epochs == 30
    assert spec_of("mlp", "--epochs", "4").epochs == 4
    spec = spec_of("mlp", "--set", "epochs=5", "--set", "optimizer=adam")
    assert spec.epochs == 5 and spec.fixed == {"optimizer": "adam"}
    assert spec_of("mlp", "--epochs", "5", "--set", "epochs=5").epochs == 5
    with pytest.raises(UsageError, match="disagree"):
        spec_of("mlp", "--epochs", "4", "--set", "epochs=5")


def test_gpus_per_trial_needs_ray():
    args = build_parser().parse_args(["mlp", "--gpus-per-trial", "0.5"])
    with pytest.raises(UsageError, match="--ray"):
        run_settings(args, study_spec(args))
