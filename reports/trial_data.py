"""Where a trial's recorded data lives, read back in one place.

optuna-dashboard shows every user attribute on the trial's page, one row each, in a box that
shows 6 rows before it scrolls (150 px, 24 px a row: measured at 1400x900 in Chromium). So a
trial keeps as user attributes only its results, what a person reads there (RESULTS; a pruned,
failed or repeated trial also its reason, one line), and everything else as trial *system*
attributes under keys starting with PREFIX, which the page does not show: the per-epoch
curves and config (long), the timings, which process ran it, epochs run (bookkeeping). The
first-layer artifacts need no attribute: Optuna links them to the trial itself (the page's
Artifacts panel; storage/internals.trial_artifact_ids).

The page shows numbers as stored, so the results there are rounded to 4 significant digits
(0.2547554347826087 -> 0.2548), and the full values are kept in FULL_RESULTS for the reports;
the model's size is the user attribute `model_size` in words ("1,707,274 parameters": a bare
`parameters 1707274` beside the page's Parameter row read as a hyperparameter) and its count
the system attribute PARAMETERS. Every report reads a trial's data through this module, which
also reads the user attributes that studies made before these changes hold (`parameters`,
unrounded results), so old studies keep reporting.
Not "storage:": the storage hides that prefix (a retried write's tokens, storage/resilient.py).
"""
from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial

from storage.internals import trial_artifact_ids

PREFIX = "optuna_search:"
CURVES = PREFIX + "curves"  # {"train_loss": [...], "val_acc": [...], ...}: a value per epoch
CONFIG = PREFIX + "config"  # the trial's whole configuration (Config.as_dict, spaces/defaults)
TIMING = PREFIX + "timing"  # {"avg_train_seconds": 1.4, ...}: seconds, and "shared_by"
RUN = PREFIX + "run"        # {"run": 2, "sampler_seed": ..., "host": ..., "pid": ...}
EPOCHS_RUN = PREFIX + "epochs_run"     # epochs trained (fewer than configured: pruned)
CAPTURE = PREFIX + "capture"           # CUDA graphs: {"seconds": 2.1} or {"failure": why}
FAIL_REASON = PREFIX + "fail_reason"   # the whole reason; the user attribute is its first line
FULL_RESULTS = PREFIX + "results"      # {"max_val_acc": ..., "test_loss": ...} unrounded
PARAMETERS = PREFIX + "parameters"     # the model's trainable parameters (count)

# What a person reads on the trial page, kept as user attributes (at most 6: one box).
RESULTS = ("max_val_acc", "test_acc", "test_loss", "max_train_acc", "best_epoch", "model_size")
ROUNDED = ("max_val_acc", "test_acc", "test_loss", "max_train_acc")  # also in FULL_RESULTS
SIGNIFICANT_DIGITS = 4
MODEL_SIZE_ATTR = "model_size"
FAIL_REASON_ATTR = "fail_reason"
FAIL_REASON_CHARACTERS = 100   # of the user attribute: one line of the box at 1400 px

# Each former user attribute that moved, or whose full value did (the user attribute is now
# rounded): its name -> (system attribute, key in its dict, or None for the whole value).
# trial_value reads either place by the old name.
MOVED = {
    "avg_train_seconds": (TIMING, "avg_train_seconds"),
    "avg_val_seconds": (TIMING, "avg_val_seconds"),
    "first_epoch_seconds": (TIMING, "first_epoch_seconds"),
    "test_seconds": (TIMING, "test_seconds"),
    "timing_shared_by": (TIMING, "shared_by"),
    "run": (RUN, None),
    "epochs_run": (EPOCHS_RUN, None),
    "capture_seconds": (CAPTURE, "seconds"),
    "capture_failure": (CAPTURE, "failure"),
    FAIL_REASON_ATTR: (FAIL_REASON, None),
    "curves": (CURVES, None),
    "config": (CONFIG, None),
    "parameters": (PARAMETERS, None),
    **{name: (FULL_RESULTS, name) for name in ROUNDED},   # the user attr is rounded
}


def trial_value(trial: FrozenTrial, name: str, default: Any = None) -> Any:
    """The trial's recorded `name` (a result such as "test_acc", or a moved one such as
    "avg_train_seconds"), from wherever this or an older version stored it; else default."""
    if name in MOVED:
        key, field = MOVED[name]
        stored = trial.system_attrs.get(key)
        if isinstance(stored, dict) and field is not None:
            stored = stored.get(field)
        if stored is not None:
            return stored
    value = trial.user_attrs.get(name)
    return default if value is None else value


def trial_curves(trial: FrozenTrial) -> dict[str, list[float]]:
    """The trial's per-epoch curves ({} before its first epoch)."""
    return trial_value(trial, "curves") or {}


def trial_config(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's configuration ({} for a trial that never started training)."""
    return trial_value(trial, "config") or {}


def has_config(trial: FrozenTrial) -> bool:
    return CONFIG in trial.system_attrs or "config" in trial.user_attrs


def artifact_id(trial: FrozenTrial, filename: str) -> str | None:
    """The id of the trial's artifact `filename` in the artifact store, or None: Optuna's own
    record of the upload, or the `artifact:<filename>` user attribute of older studies."""
    return trial_artifact_ids(trial).get(filename) or trial.user_attrs.get(f"artifact:{filename}")


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits, as the trial page shows it."""
    return float(f"{value:.{digits}g}")


def model_size_text(parameters: int) -> str:
    """The model's size in words for the trial page: '1,707,274 parameters'."""
    return f"{parameters:,} parameters"


def one_line(reason: str, characters: int = FAIL_REASON_CHARACTERS) -> str:
    """The reason's first line, cut to `characters` with an ellipsis: a user attribute."""
    line = (reason.strip().splitlines() or [""])[0]
    return line if len(line) <= characters else line[:characters - 1] + "…"
