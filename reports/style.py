"""One look for every figure, the same in optuna-dashboard's cards, the HTML files and the PNGs.

- legends go below the plot: beside it, one parameter string per trial took ~90% of a
  600 px card and left a plot 60-70 px wide;
- titles name the quantity, never the study (the page or file already says which study);
- axis titles carry units;
- the best trials get distinct colours (Okabe-Ito, readable by colour-blind people) and the
  rest a thin grey drawn underneath, so 30 trials do not reuse 10 colours three times.
"""
from __future__ import annotations

import math
from typing import Iterable

import optuna
import plotly.graph_objects as go

DEFAULT_METRIC = "val_acc"   # what the objective returns: the trial's max validation accuracy
BEST_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
                "#F0B000")
OTHERS_GREY = "rgba(130, 130, 130, 0.45)"
LOG_RANGE = 100              # a loss axis turns logarithmic when max / min exceeds this
MARGIN = dict(l=64, r=16, t=40, b=8)  # pixels; automargin adds room for the legend below


def metric_name(study: optuna.Study) -> str:
    """The objective's name as the study records it (set_metric_names), else val_acc."""
    names = study.metric_names
    return names[0] if names else DEFAULT_METRIC


def legend_below(figure: go.Figure) -> go.Figure:
    """Put a figure's legend below its plot, horizontal (tidy does; Optuna's figures need it)."""
    figure.update_layout(legend=dict(orientation="h", x=0, xanchor="left", yref="container",
                                     y=0, yanchor="bottom"))
    return figure


def tidy(figure: go.Figure, title: str, x_title: str, y_title: str,
         legend_title: str | None = None) -> go.Figure:
    """White background, a short title, axis titles with units, the legend below the plot."""
    figure.update_layout(
        template="plotly_white", title=dict(text=title, x=0.01, xanchor="left",
                                              font=dict(size=15)),
        margin=MARGIN, hovermode="closest",
        legend_title=dict(text=legend_title or "", side="top"))
    legend_below(figure)
    figure.update_xaxes(title_text=x_title, automargin=True)
    figure.update_yaxes(title_text=y_title, automargin=True)
    return figure


def log_axis_if_wide(figure: go.Figure, values: Iterable[float]) -> bool:
    """Make the y axis logarithmic when the positive values span more than LOG_RANGE times.

    One diverged trial (loss ~600 against ~1) otherwise flattens every other curve.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or min(finite) <= 0 or max(finite) / min(finite) <= LOG_RANGE:
        return False
    figure.update_yaxes(type="log")
    return True


def short(value) -> str:
    """A parameter value as the space lists it: 0.0001 stays 0.0001, 2.5e-05 stays 2.5e-05."""
    return f"{value:g}" if isinstance(value, float) else str(value)
