"""The anytime figure of a study: the best validation accuracy so far against the epochs spent,
and against the trial seconds spent (reports/budget.py counts both, pruned and failed tries
included, repeats 0 epochs). What a search bought for its budget, the question pruning and
the sampler answer: a line that climbs early spent its epochs well.

Each ended trial is a dot at the budget spent when it ended, at its own best validation
accuracy (a pruned trial's up to its prune, hollow; a failed try's, a cross), so the climbs of
the line are the trials that set a new best. A repeat (answered from the store) has no dot.
"""
from __future__ import annotations

import math

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from reports.budget import anytime
from reports.table import REPEAT_ATTR
from reports.style import BEST_COLOURS, OTHERS_MARKER, tidy
from reports.trial_data import trial_value

AXES = {  # figure name -> (Point field, x-axis title with unit)
    "anytime_epochs": ("epochs", "epochs spent (every trial's own, pruned ones included)"),
    "anytime_seconds": ("seconds", "trial seconds spent (each trial start to end, summed)"),
}
MARKERS = {  # state -> (symbol, colour, legend)
    TrialState.COMPLETE: ("circle", BEST_COLOURS[0], "a complete trial"),
    TrialState.PRUNED: ("circle-open", OTHERS_MARKER, "a pruned trial"),
    TrialState.FAIL: ("x-thin-open", BEST_COLOURS[1], "a failed try"),
}


def trial_best(trial: optuna.trial.FrozenTrial) -> float | None:
    """The trial's own best validation accuracy so far (a pruned or failed one's too)."""
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return trial.value
    values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
    return trial_value(trial, "max_val_acc", max(values) if values else None)


def anytime_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """{"anytime_epochs": ..., "anytime_seconds": ...}; {} before any trial has ended."""
    trials = study.get_trials(deepcopy=False)
    points = anytime(trials)
    if not points:
        return {}
    by_number = {t.number: t for t in trials}
    figures = {}
    for name, (axis, x_title) in AXES.items():
        xs = [getattr(p, axis) for p in points]
        figure = go.Figure(go.Scatter(
            x=[0, *xs], y=[None, *(p.best for p in points)], mode="lines", name="best so far",
            line=dict(color=BEST_COLOURS[0], width=2, shape="hv"),
            hovertemplate=f"best so far %{{y:.4f}} after %{{x:,.0f}} {axis}<extra></extra>"))
        for state, (symbol, colour, label) in MARKERS.items():
            ended = [(x, by_number[p.trial]) for x, p in zip(xs, points)
                     if by_number[p.trial].state == state
                     and REPEAT_ATTR not in by_number[p.trial].user_attrs]  # trained nothing
            ended = [(x, t, trial_best(t)) for x, t in ended if trial_best(t) is not None]
            if not ended:
                continue
            figure.add_trace(go.Scatter(
                x=[x for x, _, _ in ended], y=[v for _, _, v in ended], mode="markers",
                name=label, customdata=[t.number for _, t, _ in ended],
                marker=dict(symbol=symbol, color=colour, size=8, line=dict(width=1.5)),
                hovertemplate=(f"trial #%{{customdata}} ({state.name.lower()}): val acc "
                               f"%{{y:.4f}}, ended after %{{x:,.0f}} {axis}<extra></extra>")))
        figures[name] = tidy(figure, f"best validation accuracy so far against {axis} spent",
                             x_title, "accuracy (fraction)")
    return figures
