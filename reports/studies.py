"""The `studies` command's table: one row per study in a storage, read without torch.

Trials are counted as every summary counts them (reports/counts.py): by how they ended,
repeats apart, adding up to `trials`, the number optuna-dashboard lists.
"""
from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from reports.counts import count_trials
from reports.table import aligned, study_model
from storage import open_store

COUNTED = ("complete", "pruned", "repeats", "failed", "running", "waiting")
HEADERS = {"waiting": "queued", "best_val_acc": "best val", "best_trial": "of trial"}
ALWAYS = ("complete", "pruned", "trials")   # the other counts only where a study has some


def list_studies(storage_url: str) -> pd.DataFrame:
    """One row per study: name, model, trials by how they ended and in all, the best
    validation accuracy and its trial (None without a complete trial)."""
    store = open_store(storage_url, readonly=True)  # a reader takes no lock, fails nothing
    rows = []
    for name in optuna.get_all_study_names(storage=store.optuna):
        study = optuna.load_study(study_name=name, storage=store.optuna)
        trials = study.get_trials(deepcopy=False)
        counts = count_trials(trials)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: (t.value, -t.number), default=None)
        rows.append({"study": name, "model": study_model(study),
                     **{state: getattr(counts, state) for state in COUNTED},
                     "trials": counts.total,
                     "best_val_acc": round(best.value, 4) if best else None,
                     "best_trial": best.number if best else None})
    return pd.DataFrame(rows)


def studies_text(table: pd.DataFrame) -> str:
    """The table for a person: counts nobody has left out, "-" where there is no value."""
    shown = table[[c for c in table.columns if c not in COUNTED or c in ALWAYS
                   or table[c].any()]]
    cells = [[_cell(column, value) for column, value in row.items()]
             for _, row in shown.iterrows()]
    return "\n".join(aligned([HEADERS.get(c, c) for c in shown.columns], cells,
                              left=[c in ("study", "model") for c in shown.columns]))


def _cell(column: str, value) -> str:
    if value is None or pd.isna(value):
        return "-"
    if column == "best_val_acc":
        return f"{value:.4f}"
    return str(int(value)) if column not in ("study", "model") else str(value)
