"""Where a study's own records live, read back in one place.

optuna-dashboard shows every study user attribute in the "Study User Attributes" card of the
study's page (5 rows a page, a value column ~450 px wide at 1400 px). The record a study was
made with (its spec: model, space lists, data, sampler and pruner settings; ~900 characters
of JSON) ran off that card's edge. So the record is a study *system* attribute (RECORD),
which the page does not show, and the user attributes keep what a person reads there, one
short line each: `about` (the model and the data, in words), `budget`, `data_sizes`,
`target_trials` and `runs`: 5 rows, the card's one page. Studies made before keep their record in the user attribute `optuna_search`, and
still read (study_record looks in both places).
"""
from __future__ import annotations

import math
import weakref
from pathlib import PurePath
from typing import Any

import optuna

from storage.internals import set_study_system_attr, study_system_attrs

RECORD = "optuna_search:record"   # {"spec": {...}, "sampler": {...}, "pruner": {...}, "uid"}
OLD_RECORD = "optuna_search"      # the user attribute that held the record before
ABOUT_ATTR = "about"              # user attr: the model and the data, in words
BUDGET_ATTR = "budget"            # user attr: epochs a trial, sampler, pruning
DATA_SIZES_ATTR = "data_sizes"    # user attr: {"train": n, "val": n, "test": n} images
TARGET_ATTR = "target_trials"     # user attr: finished trials the study should end with
MODEL_NAMES = {"resnet18": "ResNet18", "mlpmixer": "MLP-Mixer", "mlp": "MLP"}
SAMPLER_NAMES = {"tpe": "TPE sampler", "random": "random sampler", "gp": "GP sampler"}

# A study's record is written once, when the study is made, and never changes (a run with
# other settings is refused), so each Study object reads it once: the study system attrs
# also hold the dashboard's figures (hundreds of KB), which a read parses whole.
_records: "weakref.WeakKeyDictionary[optuna.Study, dict]" = weakref.WeakKeyDictionary()


def study_record(study: optuna.Study) -> dict | None:
    """The record the study was made with, or None (not made by optuna-search, or made by one
    interrupted before it wrote it)."""
    record = _records.get(study)
    if record is None:
        record = study_system_attrs(study).get(RECORD) or study.user_attrs.get(OLD_RECORD)
        if record is not None:
            _records[study] = record
    return record


def save_record(study: optuna.Study, record: dict) -> None:
    """Write the study's record (once, when the study is made), in one write."""
    set_study_system_attr(study, RECORD, record)


def study_setting(study: optuna.Study, key: str, default: Any = None) -> Any:
    """A value of the settings the study was made with (search/settings.StudySpec), e.g. its
    "model" or "grid"."""
    return ((study_record(study) or {}).get("spec") or {}).get(key, default)


def data_name(source: str | None) -> str:
    """The data set in words, never a machine path: `--data cifar10` is torchvision's
    CIFAR-10, `synthetic` generated images, a file or folder its base name (CIFAR-10 when it
    says so: the image-folder layout holds any 10 classes)."""
    if not source:
        return "data not recorded"
    if source == "cifar10":
        return "CIFAR-10 (torchvision's copy)"
    if source == "synthetic":
        return "synthetic images"
    base = PurePath(str(source).rstrip("/")).name or str(source)
    return f"CIFAR-10 ({base})" if "cifar" in base.lower() else f"images of {base}"


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def sizes_text(sizes: dict | None) -> str | None:
    """'2,000 train / 500 validation / 1,000 test images', or None when not recorded."""
    if not sizes:
        return None
    return (f"{sizes['train']:,} train / {sizes['val']:,} validation / {sizes['test']:,} "
            "test images")


def search_text(study: optuna.Study) -> str:
    """'TPE sampler, median pruning', 'grid, no pruning'."""
    sampler = ("grid" if study_setting(study, "grid")
               else SAMPLER_NAMES.get(study_setting(study, "sampler"), "sampler not recorded"))
    pruner = study_setting(study, "pruner")
    return f"{sampler}, {'no' if pruner in (None, 'none') else pruner} pruning"


def budget_text(study: optuna.Study) -> str:
    """'12 trials of 4 epochs, report space, TPE sampler, median pruning, seed 0; fixed
    hidden_sizes=16; grid activation=relu,tanh'."""
    setting = lambda key: study_setting(study, key)  # noqa: E731
    grid = setting("grid") or {}
    points = math.prod(len(values) for values in grid.values()) if grid else None
    target = points or study.user_attrs.get(TARGET_ATTR)
    epochs = _epochs(setting("epochs"))
    text = (f"{target} {'grid points' if grid else 'trials'} of {epochs}" if target
            else f"{epochs} a trial")
    text += f", {setting('space') or 'report'} space, {search_text(study)}"
    if setting("seed") is not None:
        text += f", seed {setting('seed')}"
    for name in ("fixed", "grid"):
        values = setting(name) or {}
        if values:
            text += f"; {name} " + " ".join(f"{k}={_values(v)}" for k, v in values.items())
    return text


def _epochs(epochs: int | None) -> str:
    return f"{epochs or '?'} epoch{'' if epochs == 1 else 's'}"


def _values(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_values(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def about_text(study: optuna.Study) -> str:
    """The study card's first line: 'MLP on CIFAR-10 (cifar10-jpeg.tar.gz); summary in the
    Note tab'."""
    return (f"{model_name(str(study_setting(study, 'model')))} on "
            f"{data_name(study_setting(study, 'data'))}; summary in the Note tab")


def card_budget_text(study: optuna.Study) -> str:
    """The study card's budget: '30 epochs a trial, TPE sampler, median pruning' (the
    trials are its own row, target_trials)."""
    return f"{_epochs(study_setting(study, 'epochs'))} a trial, {search_text(study)}"


def describe_study(study: optuna.Study, sizes: dict) -> None:
    """Write the study card's lines where they differ (a study's first run, or a run on other
    sizes): what the study is, its budget, the data's split sizes (the report header's too).
    Each value is one line of the card (about 65 characters at 1400 px: its table is wider
    than its card, which hides the last ~45 px of every value)."""
    attrs = study.user_attrs
    for key, value in ((DATA_SIZES_ATTR, sizes), (ABOUT_ATTR, about_text(study)),
                       (BUDGET_ATTR, card_budget_text(study))):
        if attrs.get(key) != value:
            study.set_user_attr(key, value)
