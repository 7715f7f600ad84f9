"""The study's note in optuna-dashboard (its Note tab, Markdown): what the study is and how it
stands, rewritten by the search after each trial.

It says what the report's header says (reports/page.py header_lines: model, search budget,
data, trials per state, time), then the best trial with its parameters and the top-8 table.
It is optuna-dashboard's own study note (optuna_dashboard.save_note): the dashboard keeps it
in study system attrs with a version number, and refuses a save from its editor whose version
is not the next one, so a person editing while a trial finishes is told, not overwritten.

- A person's own notes are kept: the summary ends with a line (MARK); whatever follows it is
  written back below the new summary, and a note without that line is kept whole below it.
- Several processes (--workers, Ray actors, other machines) write it: each write happens
  under the study's lock (the one that serialises claims), so two writes never interleave
  their chunks, and is skipped when nothing changed.
- It is a convenience: LiveNote.after_trial never raises; a failure is said once and the
  search goes on. Writing it takes a few database writes and one read of the trials.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import optuna

from reports.page import header_lines
from reports.study_data import data_name, model_name, study_setting
from reports.table import (ReportError, constant_columns, display_table, ranked_trials,
                           study_model, text_columns, top_table)
from reports.trial_data import trial_value

TOP = 8   # rows of the note's table
GAP = "\u00a0\u00a0"   # no-break spaces: room between the table's columns
MARK = ("*Written by optuna-search after each trial; write your own notes below this line: "
        "they are kept.*")


def note_summary(study: optuna.Study) -> str:
    """The Markdown summary of the study, as the note shows it above MARK."""
    title = (f"## {model_name(study_model(study))} on "
             f"{data_name(study_setting(study, 'data'))}")
    facts = []
    for line in header_lines(study):
        label, _, text = line.partition(": ")
        facts.append(f"- **{label}:** {text}" if text else f"- {line}")
    return "\n".join([title, "", *facts, f"- **Best:** {best_text(study)}", "",
                      *top_section(study)])


def best_text(study: optuna.Study) -> str:
    """'trial 10, val acc 0.3060 at epoch 3, test acc 0.2980; batch_size=128, lr=0.00025'."""
    ranked = ranked_trials(study)
    if not ranked:
        return "no complete trial yet."
    best = ranked[0]
    val = trial_value(best, "max_val_acc", best.value)
    test = trial_value(best, "test_acc")
    epoch = trial_value(best, "best_epoch")
    params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
    return (f"trial {best.number}, val acc {val:.4f}"
            f"{f' at epoch {epoch}' if epoch else ''}"
            f"{f', test acc {test:.4f}' if test is not None else ''}"
            f"{'; ' + params if params else ''}.")


def top_section(study: optuna.Study) -> list[str]:
    """The top-TOP table in Markdown, its columns equal in every row said once above it."""
    try:
        table = top_table(study, TOP)
    except ReportError:   # no complete trial yet
        return []
    constant = constant_columns(table)
    shown = display_table(table.drop(columns=list(constant)))
    words = set(text_columns(table))
    head = _row(shown.columns)
    rule = "|" + "|".join(":---" if c in words else "---:" for c in shown.columns) + "|"
    rows = [_row(row) for row in shown.itertuples(index=False)]
    same = ("In every row: " + ", ".join(f"{k} {v}" for k, v in constant.items()) + "."
            if constant else "")
    return [f"### Top {len(table)} by max validation accuracy", "",
            *([same, ""] if same else []), head, rule, *rows]


def _row(cells) -> str:
    """A Markdown table row. The dashboard draws tables without borders or padding, which ran
    '0.05' (right-aligned) into 'momentum' (left-aligned): each cell after the first gets two
    no-break spaces in front, which Markdown keeps."""
    return "| " + " | ".join(("" if i == 0 else GAP) + str(cell)
                             for i, cell in enumerate(cells)) + " |"


def note_body(summary: str, current: str) -> str:
    """The note to write: the summary, MARK, and the person's text from `current` (the part
    below MARK, or the whole of a note without it)."""
    _, marked, below = current.partition(MARK)
    kept = (below if marked else current).strip("\n")
    return f"{summary}\n\n---\n{MARK}\n" + (f"\n{kept}\n" if kept else "")


def save_study_note(study: optuna.Study,
                    lock: Callable[[], ContextManager] | None = None) -> bool:
    """Rewrite the study's note (under `lock`, the study's lock); True when it changed."""
    from optuna_dashboard import get_note, save_note

    summary = note_summary(study)
    with (lock() if lock else contextlib.nullcontext()):
        current = get_note(study)
        body = note_body(summary, current)
        if body == current:
            return False
        save_note(study, body)   # the next version; the dashboard's editor sees it
    return True


class LiveNote:
    """The study note rewritten after each trial of a running search; never raises."""

    def __init__(self, study: optuna.Study,
                 lock: Callable[[], ContextManager] | None = None):
        self.study, self.lock = study, lock
        self.failed = False

    def after_trial(self) -> str | None:
        """Write the note. Returns one line the first time writing fails (the search goes
        on), else None."""
        try:
            save_study_note(self.study, self.lock)
        except Exception as error:
            if self.failed:
                return None
            self.failed = True
            return (f"study note for optuna-dashboard not saved ({type(error).__name__}: "
                    f"{str(error)[:200]}); the search goes on")
        return None


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_short(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
