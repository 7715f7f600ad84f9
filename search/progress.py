"""What a search prints: one line per finished trial, and a summary at the end."""
from __future__ import annotations

import sys
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from storage import DEFAULT_STORAGE, redact


def print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, out=sys.stdout) -> None:
    """One line per finished trial: number, state, val acc, seconds, parameters."""
    value = f"{trial.value:.4f}" if trial.value is not None else "  -   "
    seconds = (trial.duration.total_seconds() if trial.duration else 0.0)
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    reason = trial.user_attrs.get("diverged") or trial.user_attrs.get("fail_reason") or ""
    epochs = trial.user_attrs.get("epochs_run", "?")
    line = (f"trial {trial.number:>3} {trial.state.name:<8} val_acc={value} epochs={epochs} "
            f"{seconds:7.1f}s  {params}{'  (' + reason[:100] + ')' if reason else ''}")
    tqdm.write(line, file=out)  # keeps Optuna's progress bar (on stderr) intact


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_summary(study: optuna.Study, settings, out) -> int:
    """Trials per state, the best trial, and the command that prints its table; returns 0."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    print("trials: " + ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n), file=out)
    if not complete:
        print("no trial completed yet", file=out)
        return 0
    best = study.best_trial
    test = best.user_attrs.get("test_acc")
    print(f"best: trial {best.number} val_acc={best.value:.4f}"
          f"{f' test_acc={test:.4f}' if test is not None else ''} {best.params}", file=out)
    storage = ("" if settings.storage == DEFAULT_STORAGE
               else f" --storage {redact(settings.storage)}")
    print(f"table: optuna-search report {settings.study_name} --top 8{storage}", file=out)
    try:  # the figures are a convenience: a failure here must not fail a finished search
        from reports.dashboard_figures import register_dashboard_figures
        register_dashboard_figures(study)
    except Exception as error:
        print(f"figures for optuna-dashboard not saved ({type(error).__name__}: {error})",
              file=out)
    return 0
