"""The search-efficiency benchmark's summary (bench/search_efficiency.py runs the studies):

- T, the target: the median over seeds of random search's final best validation accuracy;
- per policy, the median and the spread (min-max) over its finished seeds of: the final best
  validation accuracy, the test accuracy of that incumbent, the epochs spent, the epochs to
  reach T (and as a share of random search's epochs), the seeds that reach T, configurations
  trained twice and repeats answered from the store;
- the anytime figure: best-so-far validation accuracy against epochs spent and against trial
  seconds, the median over seeds as a line and the 25-75% range as a band, per policy; and
  its numbers (the median at a few epoch counts).
Everything per study comes from reports/budget.py, as the product's own reports count it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go

from reports.budget import anytime, best_at, epochs_to_reach, study_budget, trained_twice
from reports.page import write_figures
from reports.style import BEST_COLOURS, tidy
from reports.table import ranked_trials
from reports.trial_data import trial_value
from search.settings import DEFAULT_PRUNER
from search.study import TARGET_ATTR, make_pruner, make_sampler
from storage import open_store

REFERENCE = "random"
# The figure's numbers are given at these shares of random search's epochs (25, 50, 75, 100,
# 200 and 300 of its 300 on the CPU budget): 1/4 and 1/3 are the targets' marks.
MARKS = (1 / 12, 1 / 6, 1 / 4, 1 / 3, 2 / 3, 1)


@dataclass
class Seed:
    """One finished (policy, seed) study, measured."""
    policy: str
    seed: int
    best_val: float | None
    test_acc: float | None
    epochs: int
    seconds: float
    twice: int
    repeats: int
    saved_share: float | None
    points: list


def is_default(spec) -> bool:
    """Whether a policy's spec makes the sampler and pruner the product makes by default."""
    default = dataclasses.replace(spec, sampler="tpe", pruner=DEFAULT_PRUNER,
                                  sampler_options={}, pruner_options={})
    return (make_sampler(spec, 0)[1] == make_sampler(default, 0)[1]
            and make_pruner(spec)[1] == make_pruner(default)[1])


def measure(storage: str, budget: str, names, seeds) -> tuple[dict[str, list[Seed]], list]:
    """Each policy's finished seeds; and the (policy, seed, trained, target) not finished."""
    store = open_store(storage, readonly=True)
    existing = set(optuna.get_all_study_names(storage=store.optuna))
    found, unfinished = {name: [] for name in names}, []
    for name in names:
        for seed in seeds:
            study_name = f"{budget}-{name}-seed{seed}"
            if study_name not in existing:
                unfinished.append((name, seed, 0, None))
                continue
            study = optuna.load_study(study_name=study_name, storage=store.optuna)
            trials = study.get_trials(deepcopy=False)
            spent = study_budget(trials)
            target = study.user_attrs.get(TARGET_ATTR)
            if target is None or spent.trained_trials < target:
                unfinished.append((name, seed, spent.trained_trials, target))
                continue
            points = anytime(trials)
            ranked = ranked_trials(study)
            found[name].append(Seed(
                name, seed, points[-1].best if points else None,
                trial_value(ranked[0], "test_acc") if ranked else None,
                spent.trained_epochs, points[-1].seconds if points else 0.0,
                trained_twice(trials), spent.repeats, spent.saved_share, points))
    return found, unfinished


def spread(values, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    """'median (min to max)' of the values that are not None; '-' when there is none."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    show = lambda v: f"{v:.{digits}f}"  # noqa: E731
    median = show(float(np.median(values))) + unit
    if len(values) == 1:
        return median
    return f"{median} ({show(min(values))} to {show(max(values))})"


def target_of(found: dict[str, list[Seed]]) -> float | None:
    finals = [s.best_val for s in found.get(REFERENCE, []) if s.best_val is not None]
    return float(np.median(finals)) if finals else None


def table(found: dict[str, list[Seed]], target: float | None, defaults: set[str]) -> str:
    reference = [s.epochs for s in found.get(REFERENCE, [])]
    ref_epochs = float(np.median(reference)) if reference else None
    head = ("| policy | seeds | best val acc | its test acc | test - val (points) | epochs "
            "spent | epochs to reach T | as share of random's | seeds reaching T | pruning "
            "saved | trained twice | repeats |")
    rows = [head, "|" + "---|" * head.count(" |")]
    for name, seeds in found.items():
        if not seeds:
            continue
        reach = [epochs_to_reach(s.points, target) if target is not None else None
                 for s in seeds]
        reached = [r for r in reach if r is not None]
        # The median over every seed: a seed that never reaches T counts as the slowest.
        ordered = sorted(reach, key=lambda r: float("inf") if r is None else r)
        median = ordered[(len(ordered) - 1) // 2] if reached else None
        shares = [r / ref_epochs for r in reached] if ref_epochs else []
        to_t = ("-" if target is None else "never" if median is None else
                f"{median}" + (f" ({min(reached)} to {max(reached)})" if len(reached) > 1 else ""))
        share = ("-" if median is None or not ref_epochs else
                 f"{median / ref_epochs:.2f} (latest {max(shares):.2f})")
        gaps = [(s.test_acc - s.best_val) if s.test_acc is not None and s.best_val is not None
                else None for s in seeds]
        label = f"**{name}** (default)" if name in defaults else name
        rows.append(
            f"| {label} | {len(seeds)} | {spread([s.best_val for s in seeds])} | "
            f"{spread([s.test_acc for s in seeds])} | {spread(gaps, 1, 100)} | "
            f"{spread([s.epochs for s in seeds], 0)} | {to_t} | {share} | "
            f"{len(reached) if target is not None else '-'} of {len(seeds)} | "
            f"{spread([s.saved_share for s in seeds], 0, 100, '%')} | "
            f"{sum(s.twice for s in seeds)} | {sum(s.repeats for s in seeds)} |")
    return "\n".join(rows)


def quantiles(values: list[float | None], qs=(25, 50, 75)) -> list[float | None]:
    """Percentiles over seeds (numpy's, interpolated); where a seed has no complete trial yet,
    it counts as the lowest and the nearest rank is taken."""
    if all(v is not None for v in values):
        return [float(np.percentile(values, q)) for q in qs]
    ordered = sorted(values, key=lambda v: -np.inf if v is None else v)
    return [ordered[int(round(q / 100 * (len(ordered) - 1)))] for q in qs]


def curves(found, axis: str, steps: int = 300) -> tuple[np.ndarray, dict]:
    """x values (epochs or seconds) and, per policy, its (q25, median, q75) lists."""
    ends = [s.points[-1].epochs if axis == "epochs" else s.points[-1].seconds
            for seeds in found.values() for s in seeds if s.points]
    if not ends:
        return np.array([]), {}
    top = max(ends)
    xs = np.arange(0, top + 1) if axis == "epochs" else np.linspace(0, top, steps)
    lines = {}
    for name, seeds in found.items():
        if seeds:
            end = max(s.points[-1].epochs if axis == "epochs" else s.points[-1].seconds
                      for s in seeds)
            shown = xs[xs <= end]
            lines[name] = (shown, [quantiles([best_at(s.points, x, axis) for s in seeds])
                                   for x in shown])
    return xs, lines


def figure(found, axis: str, target: float | None) -> go.Figure:
    _, lines = curves(found, axis)
    fig = go.Figure()
    for index, (name, (xs, qs)) in enumerate(lines.items()):
        colour = BEST_COLOURS[index % len(BEST_COLOURS)]
        low, mid, high = ([np.nan if q[i] is None else q[i] for q in qs] for i in range(3))
        fill = _rgba(colour, 0.15)
        fig.add_trace(go.Scatter(x=xs, y=high, mode="lines", line=dict(width=0, shape="hv"),
                                 legendgroup=name, showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=xs, y=low, mode="lines", line=dict(width=0, shape="hv"),
                                 fill="tonexty", fillcolor=fill, legendgroup=name,
                                 showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=xs, y=mid, mode="lines", name=name, legendgroup=name,
                                 line=dict(color=colour, width=2, shape="hv")))
    if target is not None:
        fig.add_hline(y=target, line_dash="dash", line_color="#555",
                      annotation_text=f"T = {target:.3f} (random search's median final best)")
    x_title = ("epochs spent (all trials, pruned ones included)" if axis == "epochs" else
               "trial seconds spent (summed; the machine was shared)")
    return tidy(fig, f"best validation accuracy so far against {axis} spent "
                     "(median over seeds, band 25-75%)", x_title, "accuracy (fraction)")


def marks_table(found, shares=MARKS) -> str:
    reference = [s.epochs for s in found.get(REFERENCE, [])]
    scale = float(np.median(reference)) if reference else max(
        (s.epochs for seeds in found.values() for s in seeds), default=0)
    marks = sorted({round(share * scale) for share in shares})
    head = "| policy | " + " | ".join(f"{m} epochs" for m in marks) + " | at its end |"
    rows = [head, "|" + "---|" * (len(marks) + 2)]
    for name, seeds in found.items():
        if not seeds:
            continue
        cells = []
        for mark in marks:
            median = quantiles([best_at(s.points, mark) for s in seeds], (50,))[0]
            cells.append("-" if median is None else f"{median:.3f}")
        end = quantiles([s.best_val for s in seeds], (50,))[0]
        cells.append("-" if end is None else f"{end:.3f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_summary(storage: str, budget: str, specs: dict, seeds, out: Path) -> str:
    """Write table.md, numbers.json, anytime_epochs/seconds .html (and .png) into `out`;
    return the text (table, figure's numbers, what is unfinished)."""
    found, unfinished = measure(storage, budget, list(specs), seeds)
    target = target_of(found)
    defaults = {name for name, spec in specs.items() if is_default(spec)}
    text = [f"T = {target:.4f}" if target is not None else
            "T: random search has no finished seed yet", "", table(found, target, defaults),
            "", "Median best-so-far validation accuracy after so many epochs:", "",
            marks_table(found)]
    if unfinished:
        text += ["", "Not finished (left out): " + ", ".join(
            f"{n} seed {s} ({k} of {t or '?'} trials)" for n, s, k, t in unfinished)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "numbers.json").write_text(json.dumps({
        "target": target, "policies": {n: [dataclasses.asdict(s) for s in found[n]]
                                       for n in found}}, indent=1), encoding="utf-8")
    figures = {f"anytime_{axis}": figure(found, axis, target) for axis in ("epochs", "seconds")}
    notes: list[str] = []
    write_figures(figures, out, notes)   # HTML sharing one plotly.min.js; PNG where possible
    return "\n".join(text + notes)


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"
