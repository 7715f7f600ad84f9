"""Learning curves: training/validation loss and accuracy against epoch, one line per trial.

A search's best k trials (ranked like the table: max val acc of the complete trials) are drawn
in colour and named in the legend as `#N (max val acc)`; every other trial is a thin grey line
underneath, with one legend entry for all of them (clicking it hides them). A grid's points
are all coloured and named by their grid value (`activation=relu`), as in the report's
Figures 1-12. Hovering any line shows its trial number, the epoch, the value and the
trial's parameters. Pruned and failed trials are dotted; a trial with a single epoch (pruned
after it) is a marker, since a one-point line draws nothing; the legend has a key for each
(state_keys). A loss axis is ranged to the bulk
of the curves (style.bulk_ceiling): points far above it are drawn at its top edge as
triangles, with a note saying how many; if nothing sticks out but the losses span over 100
times, the axis turns logarithmic.
"""
from __future__ import annotations

import math

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from reports.style import (BEST_COLOURS, HOVER_LINE_HINT, OTHERS_GREY, OTHERS_MARKER,
                           bulk_ceiling, cut_axis, log_axis_if_wide, metric_name, short, tidy)
from reports.table import ranked_trials, study_setting
from reports.trial_data import trial_curves, trial_value

CURVES = {  # figure name -> (trial_curves key, title, y-axis title with unit); objective first
    "val_acc": ("val_acc", "validation accuracy", "accuracy (fraction)"),
    "train_acc": ("train_acc", "training accuracy", "accuracy (fraction)"),
    "val_loss": ("val_loss", "validation loss", "loss (cross-entropy)"),
    "train_loss": ("train_loss", "training loss", "loss (cross-entropy)"),
}
BEST_K = 5  # trials drawn in colour in a search (at most len(BEST_COLOURS))


def curve_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial with at least one epoch of curves (pruned ones too), in trial order."""
    return [t for t in study.get_trials(deepcopy=False)
            if trial_curves(t).get("val_acc")]


def coloured_trials(study: optuna.Study, trials: list[FrozenTrial]) -> dict[int, str]:
    """Trial number -> legend name, for the trials drawn in colour, in legend order.

    A search: its best BEST_K complete trials, best first, as `#N (0.533)`.
    A grid: every point (up to one per colour), in trial order, named by its grid value.
    """
    grid = study_setting(study, "grid") or {}
    if grid:
        varying = [k for k in grid if len({repr(t.params.get(k)) for t in trials}) > 1]
        names = {}
        for t in trials[:len(BEST_COLOURS)]:
            name = " ".join(f"{k}={short(t.params[k])}" for k in varying if k in t.params)
            if t.state != TrialState.COMPLETE:
                name += f" ({t.state.name.lower()})"
            names[t.number] = name.strip() or f"#{t.number}"
        return names
    plotted = {t.number for t in trials}
    best = [t for t in ranked_trials(study) if t.number in plotted]
    return {t.number: f"#{t.number} ({trial_value(t, 'max_val_acc', t.value):.3f})"
            for t in best[:BEST_K]}


def learning_curves(study: optuna.Study) -> dict[str, go.Figure]:
    """Four figures (train/val loss and accuracy against epoch), one trace per trial."""
    trials = curve_trials(study)
    coloured = coloured_trials(study, trials)
    others = [t for t in trials if t.number not in coloured]
    by_number = {t.number: t for t in trials}
    curves = {t.number: trial_curves(t) for t in trials}
    epochs = max((len(c["val_acc"]) for c in curves.values()), default=1)
    grid = bool(study_setting(study, "grid"))
    legend_title = ("" if grid or not coloured else
                    f"best {len(coloured)} by max {metric_name(study)}{HOVER_LINE_HINT}")
    figures = {}
    for name, (key, title, y_title) in CURVES.items():
        values = {number: c.get(key, []) for number, c in curves.items()}
        ceiling = bulk_ceiling(list(values.values())) if "loss" in key else None
        figure = go.Figure()
        for t in others:  # grey first, so the coloured lines are drawn over them
            figure.add_trace(_trace(t, values[t.number], title, ceiling, color=OTHERS_GREY,
                                    width=1, markers=False, name=f"#{t.number}",
                                    showlegend=False))
        if others:  # one legend entry that shows or hides every grey line
            figure.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers",
                                        legendgroup="others", showlegend=True,
                                        hoverinfo="skip", name=f"other trials ({len(others)})",
                                        legendrank=999, marker=dict(color=OTHERS_MARKER, size=5),
                                        line=dict(color=OTHERS_GREY, width=1)))
        for key_trace in state_keys(trials):
            figure.add_trace(key_trace)
        ranked = list(coloured.items())
        for rank in reversed(range(len(ranked))):  # the best trial is drawn last, on top
            number, label = ranked[rank]
            figure.add_trace(_trace(by_number[number], values[number], title, ceiling,
                                    color=BEST_COLOURS[rank], width=2.2, markers=True,
                                    name=label, showlegend=True, legendrank=rank + 1))
        tidy(figure, title, "epoch", y_title, legend_title)
        figure.update_xaxes(tick0=1, dtick=max(1, math.ceil(epochs / 15)),  # <= ~15 ticks
                            range=[0.6, epochs + 0.4])  # a lone epoch-1 marker off the edge
        drawn = [v for curve in values.values() for v in curve]
        if ceiling is not None:
            cut_axis(figure, drawn, ceiling)
        elif "loss" in key:
            log_axis_if_wide(figure, drawn)
        figures[f"curves_{name}"] = figure
    return figures


KEY_COLOUR = "#555555"   # the legend's keys for how a trial ended: no trial's colour


def state_keys(trials: list[FrozenTrial]) -> list[go.Scatter]:
    """Legend entries that say how a line shows how its trial ended, for the cases drawn: a
    dotted line is a trial not complete (pruned; failed, or still running), a lone dot one
    pruned after its first epoch. They draw nothing themselves (their one point is None)."""
    epochs = {t.number: len(trial_curves(t).get("val_acc", [])) for t in trials}
    dotted = sorted({t.state.name.lower() for t in trials
                     if t.state != TrialState.COMPLETE and epochs[t.number] > 1},
                    key=lambda state: (state != "pruned", state))   # pruned first
    keys = []
    if dotted:
        words = (", ".join(dotted[:-1]) + " or " if len(dotted) > 1 else "") + dotted[-1]
        keys.append(go.Scatter(x=[None], y=[None], mode="lines", hoverinfo="skip",
                               showlegend=True, legendrank=1001, name=f"dotted: {words}",
                               line=dict(color=KEY_COLOUR, width=1.5, dash="dot")))
    if any(t.state == TrialState.PRUNED and epochs[t.number] == 1 for t in trials):
        keys.append(go.Scatter(x=[None], y=[None], mode="markers", hoverinfo="skip",
                               showlegend=True, legendrank=1002,
                               name="a dot: pruned after epoch 1",
                               marker=dict(color=KEY_COLOUR, size=7)))
    return keys


def _trace(trial: FrozenTrial, values: list[float], title: str, ceiling: float | None, *,
           color: str, width: float, markers: bool, name: str, showlegend: bool,
           legendrank: int = 1000) -> go.Scatter:
    """One trial's curve. Points above `ceiling` sit on it as triangles (hover: the value);
    a grey line has no markers, except such points and a lone epoch (else it is invisible)."""
    above = [ceiling is not None and v is not None and v > ceiling for v in values]
    lone = len(values) == 1
    complete = trial.state == TrialState.COMPLETE
    return go.Scatter(
        x=list(range(1, len(values) + 1)), y=[ceiling if a else v for a, v in zip(above, values)],
        customdata=list(values), name=name, mode="lines+markers",
        marker=dict(symbol=["triangle-up" if a else "circle" for a in above],
                    size=[9 if a else 7 if lone else 5 if markers else 0 for a in above],
                    color=OTHERS_MARKER if color == OTHERS_GREY else color),
        line=dict(color=color, width=width, dash="solid" if complete else "dot"),
        legendgroup=None if showlegend else "others", showlegend=showlegend,
        legendrank=legendrank, hovertemplate=_hover(trial, title), cliponaxis=False)


def _hover(trial: FrozenTrial, title: str) -> str:
    """`#N (pruned)`, `epoch 3: validation loss 1.234`, then one parameter a line."""
    state = "" if trial.state == TrialState.COMPLETE else f" ({trial.state.name.lower()})"
    params = "<br>".join(f"{k}={short(v)}" for k, v in trial.params.items())
    return (f"<b>#{trial.number}</b>{state}<br>epoch %{{x}}: {title} %{{customdata:.4g}}"
            f"<br>{params}<extra></extra>")
