"""Where a trial's long data lives, read back in one place.

optuna-dashboard shows every user attribute on the trial's page, one row each; a value longer
than a line (the per-epoch curves: ~900 characters after 8 epochs, the config: ~280) made the
page 7,870 px wide. So the search keeps only short values as user attributes and stores the
long ones as trial *system* attributes under keys starting with PREFIX, which the dashboard
does not show. Every report reads them through this module, which also reads the user
attributes that studies made before this change hold, so old studies keep working.

Not "storage:": the storage hides that prefix (a retried write's tokens, storage/resilient.py).
"""
from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial

PREFIX = "optuna_search:"
CURVES = PREFIX + "curves"  # {"train_loss": [...], "val_acc": [...], ...}: a value per epoch
CONFIG = PREFIX + "config"  # the trial's whole configuration (Config.as_dict, spaces/defaults)


def trial_curves(trial: FrozenTrial) -> dict[str, list[float]]:
    """The trial's per-epoch curves ({} before its first epoch)."""
    return _long_value(trial, CURVES, "curves") or {}


def trial_config(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's configuration ({} for a trial that never started training)."""
    return _long_value(trial, CONFIG, "config") or {}


def has_config(trial: FrozenTrial) -> bool:
    return CONFIG in trial.system_attrs or "config" in trial.user_attrs


def _long_value(trial: FrozenTrial, key: str, old_user_attr: str):
    value = trial.system_attrs.get(key)
    return value if value is not None else trial.user_attrs.get(old_user_attr)
