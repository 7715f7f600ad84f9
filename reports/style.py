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
OTHERS_MARKER = "rgba(110, 110, 110, 0.8)"  # a lone epoch's marker: a dot must not be faint
LOG_RANGE = 100              # a loss axis turns logarithmic when max / min exceeds this
BULK_QUANTILE = 0.9          # of the drawn points, weighted as below: the axis shows these ...
BULK_MARGIN = 1.15           # ... with this much headroom
CLIP_WHEN_OVER = 1.5         # clip only when the highest point is this far above the ceiling
MARGIN = dict(l=64, r=16, t=40, b=8)  # pixels; automargin adds room for the legend below
# What only a live figure can do, said in its text; a picture of it (PNG) leaves these out.
HOVER_LINE_HINT = " (hover a line for its parameters)"
HOVER_VALUE_HINT = " (hover for values)"


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


def bulk_ceiling(curves: list[list[float]]) -> float | None:
    """The top of a y axis that the bulk of the curves fill, or None when nothing sticks out.

    One trial pruned after epoch 1 with a training loss of 24.75, beside 19 curves under 2.5,
    left those curves flat in the bottom 8% of the plot. Each curve counts with its highest
    value once per point drawn, so a curve of 8 epochs weighs 8 times a lone point: the
    ceiling is BULK_MARGIN times the BULK_QUANTILE of those, unless every point fits under
    CLIP_WHEN_OVER times that (a ceiling that would hide little is not worth a cut axis).
    """
    weighted, highest = [], -math.inf
    for curve in curves:
        finite = [v for v in curve if v is not None and math.isfinite(v)]
        if finite:
            weighted += [max(finite)] * len(finite)
            highest = max(highest, max(finite))
    if not weighted:
        return None
    weighted.sort()
    ceiling = BULK_MARGIN * weighted[min(len(weighted) - 1, int(BULK_QUANTILE * len(weighted)))]
    return ceiling if ceiling > 0 and highest > CLIP_WHEN_OVER * ceiling else None


def cut_axis(figure: go.Figure, values: Iterable[float], ceiling: float) -> int:
    """Range the y axis from the lowest value to `ceiling` and say on the figure how many
    points lie above it (drawn at the top edge as triangles); returns that count."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    above = sum(v > ceiling for v in finite)
    low = min(min(finite), ceiling)
    pad = 0.04 * (ceiling - low) or 0.05 * abs(ceiling) or 0.05
    figure.update_yaxes(range=[low - pad, ceiling + pad])
    figure.add_annotation(text=f"▲ {above} point{'s' * (above != 1)} above {ceiling:.3g}, "
                               f"drawn at the top edge{HOVER_VALUE_HINT}",
                          xref="paper", yref="paper", x=1, y=1, xanchor="right",
                          yanchor="bottom", showarrow=False, font=dict(size=11, color="#555"))
    return above


def for_print(figure: go.Figure) -> go.Figure:
    """A copy of `figure` for a still picture: without the hints that only make sense in a
    live figure (hovering), which a PNG cannot do."""
    still = go.Figure(figure)
    legend_title = still.layout.legend.title.text
    if legend_title:
        still.update_layout(legend_title_text=_without_hints(legend_title))
    for annotation in still.layout.annotations:
        annotation.text = _without_hints(annotation.text or "")
    return still


def _without_hints(text: str) -> str:
    for hint in (HOVER_LINE_HINT, HOVER_VALUE_HINT):
        text = text.replace(hint, "")
    return text


def short(value) -> str:
    """A parameter value as the space lists it: 0.0001 stays 0.0001, 2.5e-05 stays 2.5e-05."""
    return f"{value:g}" if isinstance(value, float) else str(value)
