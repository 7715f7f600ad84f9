"""Register a study's figures with optuna-dashboard, so `optuna-search dashboard` shows them.

Only what the dashboard does not draw itself: its own panels already show the optimization
history, parameter importances and parallel coordinates (with the objective's name), so
those are not saved again. Reading order: the learning curves (accuracy row, then loss row,
validation left of training, as the dashboard's two-column grid lays them out), then the
patch-size figures, then anything else.

Each figure is stored with optuna_dashboard.save_plotly_graph_object under a fixed id that
starts with its place in that order (`01-curves_val_acc`), so a later call replaces it.
optuna-dashboard 0.21 lists the ids from a set (any order); search/dashboard.py serves them
sorted by id. Figures an older version saved under other ids are emptied, and that server
leaves empty ones out. The first-layer pictures are already per-trial artifacts
(first_layer.png, uploaded by the objective), which the dashboard shows on each trial's page.

While a search runs, its run loop (search/run.py) saves them again after each trial through
LiveFigures, which skips a turn when saving would take more than SHARE of the wall time, so a
person watching sees the curves grow; the search's summary saves them once more at the end.
"""
from __future__ import annotations

import time

import optuna
import plotly.graph_objects as go

from reports.anytime import anytime_figures
from reports.figures import learning_curves, patch_size_figures
from storage.internals import set_study_system_attr, study_system_attrs

ORDER = ("curves_val_acc", "curves_train_acc", "curves_val_loss", "curves_train_loss",
         "anytime_epochs", "anytime_seconds", "patch_parameters", "patch_train_seconds", "patch_val_seconds")
PLOT_DATA_PREFIX = "dashboard:plot_data:"  # optuna-dashboard's study system attr keys
SHARE = 0.1  # of a search's wall time, at most, spent saving figures while it runs


def dashboard_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Figure id -> figure, in reading order; ids sort in that same order."""
    figures = {**learning_curves(study), **anytime_figures(study), **patch_size_figures(study)}
    names = sorted(figures, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {f"{place:02d}-{name}": figures[name] for place, name in enumerate(names, start=1)}


def register_dashboard_figures(study: optuna.Study) -> list[str]:
    """Save the study's figures for optuna-dashboard and empty any other saved ones.

    Returns the ids saved, in reading order.
    """
    from optuna_dashboard import save_plotly_graph_object

    figures = dashboard_figures(study)
    for figure_id, figure in figures.items():
        # ids allow letters, digits, "-", "_", ":" and "."
        save_plotly_graph_object(study, figure, graph_object_id=figure_id)
    for key, value in study_system_attrs(study).items():
        # keys are PREFIX + id + ":" + chunk number; the id itself may contain ":"
        figure_id = key[len(PLOT_DATA_PREFIX):].rpartition(":")[0]
        if key.startswith(PLOT_DATA_PREFIX) and figure_id not in figures and value:
            set_study_system_attr(study, key, "")  # attrs cannot be deleted
    return list(figures)


class LiveFigures:
    """Save a running study's figures after a trial, at most SHARE of the time in all: after
    a save that took s seconds, the next waits s * (1 / SHARE - 1) seconds (a 30-trial study
    saves in ~0.5 s; trials take seconds to hours)."""

    def __init__(self, study: optuna.Study, clock=time.monotonic):
        self.study, self.clock = study, clock
        self.next_at = clock()
        self.saves = 0
        self.failed = False

    def after_trial(self) -> str | None:
        """Save if due. Returns one line the first time saving fails (the search goes on:
        the figures are a convenience), else None."""
        start = self.clock()
        if start < self.next_at:
            return None
        try:
            register_dashboard_figures(self.study)
        except Exception as error:
            self.next_at = self.clock() + 60.0  # seconds: try again later, quietly
            if self.failed:
                return None
            self.failed = True
            return (f"figures for optuna-dashboard not saved ({type(error).__name__}: "
                    f"{str(error)[:200]}); the search goes on")
        self.saves += 1
        self.next_at = self.clock() + (self.clock() - start) * (1 / SHARE - 1)
        return None
