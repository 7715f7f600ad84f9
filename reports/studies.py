"""The studies in a storage, one row each: name, model, trials per state, best val acc."""
from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from reports.table import study_model
from storage import open_storage


def list_studies(storage_url: str) -> pd.DataFrame:
    storage = open_storage(storage_url, heartbeat=False)
    rows = []
    for name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
        row = {"study": name, "model": study_model(study)}
        for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"):
            row[state.lower()] = sum(t.state.name == state for t in trials)
        row["best_val_acc"] = round(max(complete), 4) if complete else None
        rows.append(row)
    return pd.DataFrame(rows)
