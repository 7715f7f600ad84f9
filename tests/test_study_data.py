"""A study's own records (reports/study_data.py): the record a study was made with lives where
the dashboard's study card does not show it, studies made before still read, and the card's
user attributes say what the study is in short lines, never with a machine path
(tests/test_browser.py checks none is cut in the card)."""
from __future__ import annotations

import json

import optuna
import pytest

from reports.study_data import (RECORD, about_text, data_name, describe_study, save_record,
                                study_record, study_setting)
from search.cli import main
from storage.internals import study_system_attrs

from helpers import TINY

SPEC = {"model": "mlpmixer", "space": "report", "epochs": 30, "seed": 0, "sampler": "tpe",
        "pruner": "median", "grid": None, "data": "/work/shared/data/cifar10-jpeg.tar.gz"}


@pytest.mark.parametrize("source, said", [
    ("/work/shared/data/cifar10-jpeg.tar.gz", "CIFAR-10 (cifar10-jpeg.tar.gz)"),
    ("../shared/data/CIFAR10/", "CIFAR-10 (CIFAR10)"),
    ("cifar10", "CIFAR-10 (torchvision's copy)"),
    ("synthetic", "synthetic images"),
    ("/home/me/flowers", "images of flowers"),
    (None, "data not recorded"),
])
def test_the_data_is_named_never_by_its_path(source, said):
    assert data_name(source) == said


def test_the_record_is_a_system_attr_and_an_old_studys_user_attr_still_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    new = optuna.create_study(study_name="new", storage=url)
    save_record(new, {"spec": SPEC, "uid": "abc"})
    assert study_system_attrs(new)[RECORD]["uid"] == "abc" and new.user_attrs == {}
    old = optuna.create_study(study_name="old", storage=url)
    old.set_user_attr("optuna_search", {"spec": {**SPEC, "model": "mlp"}, "uid": "def"})
    for name, model, uid in (("new", "mlpmixer", "abc"), ("old", "mlp", "def")):
        study = optuna.load_study(study_name=name, storage=url)
        assert study_setting(study, "model") == model and study_record(study)["uid"] == uid
    assert study_record(optuna.create_study(study_name="none", storage=url)) is None


def test_the_study_card_reads_in_short_lines_without_a_path(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    save_record(study, {"spec": SPEC})
    sizes = {"train": 45000, "val": 5000, "test": 10000}
    describe_study(study, sizes)
    assert study.user_attrs == {
        "data_sizes": sizes,
        "about": "MLP-Mixer on CIFAR-10 (cifar10-jpeg.tar.gz); summary in the Note tab",
        "budget": "30 epochs a trial, TPE sampler, median pruning"}
    assert about_text(study) == study.user_attrs["about"]
    describe_study(study, sizes)                              # the same: nothing rewritten
    assert len(study.user_attrs) == 3


def test_a_search_leaves_only_short_user_attributes_on_its_study(tmp_path):
    """The study card (5 rows a page, ~450 px of value) shows each whole: the spec's ~900
    characters of JSON went over its edge."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["mlp", "--trials", "1", "--epochs", "1", "--storage", url, *TINY]) == 0
    study = optuna.load_study(study_name="mlp", storage=url)
    assert sorted(study.user_attrs) == ["about", "budget", "data_sizes", "runs",
                                        "target_trials"]    # the card's one page: 5 rows
    for key, value in study.user_attrs.items():
        assert len(json.dumps(value)) <= 65, (key, value)    # a line of the card at most
    assert len(json.dumps(study_record(study))) > 500          # the long record, elsewhere
    assert study_record(study)["spec"]["model"] == "mlp"
