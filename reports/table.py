"""Study -> the report's top-k table (a DataFrame), and Markdown / CSV text of it.

Columns are chosen explicitly from each trial's config (reports/trial_data.py) and its metrics
(never the whole of trials_dataframe, which carries system_attrs_* columns):

    rank, trial, batch size, learning rate, optimizer, momentum, weight decay,
    [mlpmixer: embed dim, blocks, drop rate, patch size] [mlp: activation],
    max train acc, max val acc, test acc, epochs run [, state with --include-pruned]

Rows are ranked by max val acc (choose on validation, never on test). Plain SGD has no
momentum, so its momentum is blank ("-" in Markdown).
"""
from __future__ import annotations

import math
import textwrap
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from reports.study_data import DATA_SIZES_ATTR, study_setting  # noqa: F401 (importers)
from reports.trial_data import has_config, trial_config, trial_value
from storage import Store, open_store


class ReportError(ValueError):
    """A study that cannot be reported on (unknown name, no trials): exit status 2."""


# (column, config key) for the searched parameters, per model, in the report's order.
COMMON_PARAMS = [("batch size", "batch_size"), ("learning rate", "lr"),
                 ("optimizer", "optimizer"), ("momentum", "momentum"),
                 ("weight decay", "weight_decay"), ("schedule", "schedule")]
MODEL_PARAMS = {
    "resnet18": [],
    "mlpmixer": [("embed dim", "embed_dim"), ("blocks", "num_blocks"),
                 ("drop rate", "drop_rate"), ("patch size", "patch_size")],
    "mlp": [("activation", "activation")],
}
# (column, trial_value name) for the measured numbers, all written by search/objective.py.
# search/objective.py answers a trial whose parameters a finished trial was trained with from
# that trial's result, without training, and marks it with the original's number.
REPEAT_ATTR = "repeat_of"
METRICS = [("max train acc", "max_train_acc"), ("max val acc", "max_val_acc"),
           ("test acc", "test_acc"), ("epochs run", "epochs_run")]
ACCURACY_COLUMNS = ("max train acc", "max val acc", "test acc")


def load_study(storage_url: str, study_name: str, store: Store | None = None) -> optuna.Study:
    """Open an existing study for reading; creates no file and no study.

    `store`: the storage of `storage_url` already opened read-only, for a caller that reads
    several studies through one. Raises StorageError for a missing storage file, ReportError
    for an unknown study name.
    """
    store = store or open_store(storage_url, readonly=True)  # no lock; refuses a missing file
    names = optuna.get_all_study_names(storage=store.optuna)
    if study_name not in names:
        known = ", ".join(names) if names else "none"
        raise ReportError(f"no study {study_name!r} in {store.name} (studies: {known})")
    return optuna.load_study(study_name=study_name, storage=store.optuna)


def study_model(study: optuna.Study) -> str:
    """The model a study searched: its recorded settings, else guessed from a trial's config."""
    model = study_setting(study, "model")
    if model in MODEL_PARAMS:
        return model
    for trial in study.get_trials(deepcopy=False):
        config = trial_config(trial)
        if "activation" in trial.params:
            return "mlp"
        if "embed_dim" in trial.params or "num_blocks" in trial.params:
            return "mlpmixer"
        if config:
            return "resnet18"
    return "resnet18"


def columns(model: str, include_state: bool = False) -> list[str]:
    """The table's columns for a model, in order."""
    names = ["rank", "trial", *(c for c, _ in COMMON_PARAMS + MODEL_PARAMS[model]),
             *(c for c, _ in METRICS)]
    return names + ["state"] if include_state else names


def ranked_trials(study: optuna.Study, include_pruned: bool = False) -> list[FrozenTrial]:
    """Complete trials (and, if asked, the others that have a config), best max val acc first;
    a repeat of a trained configuration (REPEAT_ATTR) is its original's row, shown once.

    Ties keep the earlier trial first; a trial with no validation epoch yet goes last.
    """
    trials = [t for t in study.get_trials(deepcopy=False)
              if REPEAT_ATTR not in t.user_attrs and (
                  t.state == TrialState.COMPLETE
                  or (include_pruned and has_config(t)))]
    return sorted(trials, key=lambda t: (-_val_acc(t), t.number))


def _val_acc(trial: FrozenTrial) -> float:
    value = trial_value(trial, "max_val_acc", trial.value)
    return float(value) if value is not None and not math.isnan(value) else -math.inf


def top_table(study: optuna.Study, top: int = 8, include_pruned: bool = False) -> pd.DataFrame:
    """The report's table: one row per trial, best max val acc first, at most `top` rows.

    Raises ReportError when the study has no trial to show.
    """
    trials = ranked_trials(study, include_pruned)
    if not trials:
        counts = pd.Series([t.state.name.lower() for t in study.trials]).value_counts()
        have = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials"
        hint = "" if include_pruned or not len(counts) else "; --include-pruned shows the others"
        raise ReportError(f"study {study.study_name!r} has no complete trial yet ({have}){hint}")
    model = study_model(study)
    params = COMMON_PARAMS + MODEL_PARAMS[model]
    rows = []
    for rank, trial in enumerate(trials[:top], start=1):
        config = trial_config(trial)
        row: dict[str, Any] = {"rank": rank, "trial": trial.number}
        for column, key in params:
            row[column] = config.get(key, trial.params.get(key))
        if config.get("optimizer", trial.params.get("optimizer")) == "sgd":
            row["momentum"] = None  # plain SGD uses no momentum
        for column, key in METRICS:
            row[column] = trial_value(trial, key)
        if include_pruned:
            row["state"] = trial.state.name.lower()
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns(model, include_pruned))
    for column in ACCURACY_COLUMNS:
        table[column] = table[column].astype(float)
    return table


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text cells: accuracies to 4 decimals, rates as typed, blanks as "-"."""
    shown = table.astype(object).copy()
    for column in table.columns:
        shown[column] = [_cell(column, value) for value in table[column]]
    return shown


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in ACCURACY_COLUMNS:
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:g}"  # 0.0001 -> 0.0001, 2.5e-05 stays as the space lists it
    return str(value)


def text_columns(table: pd.DataFrame) -> list[str]:
    """The columns holding words (optimizer, schedule, activation, state): aligned left;
    numbers are aligned right."""
    return [c for c in table.columns
            if any(isinstance(v, str) for v in table[c] if v is not None)]


def constant_columns(table: pd.DataFrame) -> dict[str, str]:
    """Column -> its one value, for the columns whose cell is the same in every row (of two
    or more): a page says them once above the table instead of in every row."""
    if len(table) < 2:
        return {}
    shown = display_table(table)
    return {c: shown[c].iloc[0] for c in table.columns
            if c not in ("rank", "trial") and shown[c].nunique() == 1}


# A terminal's table (`report` on a terminal): short headers, so that a model's top 8 fit 100
# columns; the long names stay in Markdown, CSV and HTML. A short name that is no plain word
# is explained in the table's key.
SHORT = {"rank": "#", "batch size": "bs", "learning rate": "lr", "optimizer": "opt",
         "momentum": "mom", "weight decay": "wd", "schedule": "sched", "embed dim": "dim",
         "drop rate": "drop", "patch size": "patch", "activation": "act",
         "max train acc": "train", "max val acc": "val", "test acc": "test", "epochs run": "ep"}
KEYED = ("bs", "opt", "mom", "wd", "sched", "dim", "drop", "act", "ep")
ACCURACY_KEY = ("train, val: the best accuracy of any epoch; test: with the best val epoch's "
                "weights")
RANKING = "Ranked by max validation accuracy (chosen on validation, never on test)."


def to_text(table: pd.DataFrame, width: int = 80) -> list[str]:
    """The table for a terminal, as lines: the columns equal in every row said once above it
    (constant_columns), short headers, words left and numbers right, and a key below; the
    sentences wrapped to `width` columns."""
    constant = constant_columns(table)
    rest = table.drop(columns=list(constant))
    words = set(text_columns(rest))
    headers = [SHORT.get(c, c) for c in rest.columns]
    grid = aligned(headers, display_table(rest).to_numpy().tolist(),
                   left=[c in words for c in rest.columns])
    lines = [RANKING]
    if constant:
        lines.append("In every row: " + ", ".join(f"{k} {v}" for k, v in constant.items())
                     + ".")
    keys = [f"{h} {long}" for long, h in SHORT.items() if h in KEYED and h in headers]
    key = "Key: " + "; ".join([ACCURACY_KEY, *([", ".join(keys)] if keys else [])]) + "."
    wrap = lambda text: textwrap.wrap(text, width, subsequent_indent="    ")  # noqa: E731
    return [*(part for line in lines for part in wrap(line)), *grid, *wrap(key)]


def aligned(headers: list[str], rows: list[list[str]], left: list[bool]) -> list[str]:
    """Text cells in columns two spaces apart, each as wide as its widest cell (tabulate
    pads every column by two more), under a rule of dashes; words left, numbers right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "  ".join(f"{cell:<{w}}" if is_left else f"{cell:>{w}}"
                         for cell, w, is_left in zip(cells, widths, left)).rstrip()

    return [line(headers), line("-" * w for w in widths), *(line(row) for row in rows)]


def to_markdown(table: pd.DataFrame) -> str:
    # disable_numparse keeps "0.0001" and "2.5e-05" exactly as display_table wrote them
    text = text_columns(table)
    align = ["left" if c in text else "right" for c in table.columns]
    return display_table(table).to_markdown(index=False, disable_numparse=True, colalign=align)


def to_csv(table: pd.DataFrame) -> str:
    """Full precision, blank where there is no value (momentum for sgd, test acc if pruned)."""
    return table.to_csv(index=False)
