"""The `studies` command's table: one row per study in a storage, read without torch."""
from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from reports.table import study_model
from storage import open_store

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def list_studies(storage_url: str) -> pd.DataFrame:
    """One row per study: name, model, trials per state, best validation accuracy."""
    store = open_store(storage_url, readonly=True)  # a reader takes no lock, fails nothing
    rows = []
    for name in optuna.get_all_study_names(storage=store.optuna):
        study = optuna.load_study(study_name=name, storage=store.optuna)
        trials = study.get_trials(deepcopy=False)
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
        row = {"study": name, "model": study_model(study)}
        for state in STATES:
            row[state.lower()] = sum(t.state.name == state for t in trials)
        row["best_val_acc"] = round(max(complete), 4) if complete else None
        rows.append(row)
    return pd.DataFrame(rows)
