"""Study -> the report's plotly figures, read from the storage alone (no retraining).

- learning curves: train loss, val loss, train acc, val acc against epoch, one line per
  trial (Figures 1-12); the legend names what varies: `activation=relu` for a grid, else
  the trial number and the parameters that differ between the plotted trials;
- against patch size, when it varies: parameters, avg train and val seconds (Figures 13-15);
- Optuna's optimization history, parameter importances and parallel coordinates.
The first-layer pictures of the best trial come from the artifact store (best_pictures).
"""
from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.trial import FrozenTrial, TrialState

from reports.pictures import picture_png, picture_variants
from reports.table import ranked_trials, study_model, study_setting

CURVES = {  # figure name -> (user_attrs["curves"] key, y-axis title)
    "train_loss": ("train_loss", "training loss"),
    "val_loss": ("val_loss", "validation loss"),
    "train_acc": ("train_acc", "training accuracy"),
    "val_acc": ("val_acc", "validation accuracy"),
}
PATCH_FIGURES = {  # figure name -> (user attr, y-axis title with unit)
    "patch_parameters": ("parameters", "parameters"),
    "patch_train_seconds": ("avg_train_seconds", "average training time per epoch (s)"),
    "patch_val_seconds": ("avg_val_seconds", "average validation time per epoch (s)"),
}
WEIGHT_ARTIFACT = "first_layer.npy"  # uploaded by search/objective.py while the trial trains


def curve_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial with at least one epoch of curves (pruned ones too), in trial order."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("curves", {}).get("val_acc")]


def trial_labels(study: optuna.Study, trials: list[FrozenTrial]) -> dict[int, str]:
    """Trial number -> legend text naming only what varies between these trials."""
    grid = study_setting(study, "grid") or {}
    keys = list(grid) or sorted({k for t in trials for k in t.params})
    varying = [k for k in keys if len({repr(t.params.get(k)) for t in trials}) > 1]
    labels = {}
    for t in trials:
        parts = [f"{k}={_short(t.params[k])}" for k in varying if k in t.params]
        if not grid:
            parts.insert(0, f"#{t.number}")
        if t.state != TrialState.COMPLETE:
            parts.append(f"({t.state.name.lower()})")
        labels[t.number] = " ".join(parts) or f"#{t.number}"
    return labels


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def learning_curves(study: optuna.Study) -> dict[str, go.Figure]:
    """Four figures (train/val loss and accuracy against epoch), one trace per trial."""
    trials = curve_trials(study)
    labels = trial_labels(study, trials)
    epochs = max((len(t.user_attrs["curves"]["val_acc"]) for t in trials), default=1)
    epoch_step = max(1, math.ceil(epochs / 15))
    figures = {}
    for name, (key, title) in CURVES.items():
        figure = go.Figure()
        for t in trials:
            values = t.user_attrs["curves"].get(key, [])
            complete = t.state == TrialState.COMPLETE
            figure.add_trace(go.Scatter(
                x=list(range(1, len(values) + 1)), y=list(values), mode="lines+markers",
                name=labels[t.number], line=dict(dash="solid" if complete else "dot")))
        figure.update_layout(title=f"{study.study_name}: {title}", xaxis_title="epoch",
                             yaxis_title=title, legend_title_text="trial")
        figure.update_xaxes(tick0=1, dtick=epoch_step)  # whole epochs, at most ~15 ticks
        figures[f"curves_{name}"] = figure
    return figures


def patch_size_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Parameters and seconds per epoch against patch size, when patch size varies.

    Values are the mean over the complete trials of each patch size (one per size in a grid).
    """
    rows = [{"patch size": t.user_attrs.get("config", {}).get("patch_size"),
             **{attr: t.user_attrs.get(attr) for attr, _ in PATCH_FIGURES.values()}}
            for t in ranked_trials(study)]
    frame = pd.DataFrame(rows).dropna(subset=["patch size"]) if rows else pd.DataFrame()
    if frame.empty or frame["patch size"].nunique() < 2:
        return {}
    means = frame.groupby("patch size").mean(numeric_only=True).sort_index()
    figures = {}
    for name, (attr, title) in PATCH_FIGURES.items():
        figure = go.Figure(go.Bar(x=[str(int(p)) for p in means.index], y=means[attr].tolist(),
                                  text=[f"{v:,.0f}" if attr == "parameters" else f"{v:.2f}"
                                        for v in means[attr]], textposition="outside"))
        figure.update_layout(title=f"{study.study_name}: {title} against patch size",
                             xaxis_title="patch size (pixels)", yaxis_title=title)
        figures[name] = figure
    return figures


def optuna_figures(study: optuna.Study, notes: list[str] | None = None) -> dict[str, go.Figure]:
    """Optuna's optimization history, parameter importances, parallel coordinates.

    Figures that cannot be drawn yet are skipped, with a reason appended to `notes`.
    """
    notes = [] if notes is None else notes
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        notes.append("optuna figures skipped: no complete trial")
        return {}
    vis = optuna.visualization
    figures = {"optimization_history": vis.plot_optimization_history(study)}
    varying = {k for k in {k for t in complete for k in t.params}
               if len({repr(t.params.get(k)) for t in complete}) > 1}
    if len(complete) >= 2 and varying:
        try:
            with warnings.catch_warnings():  # "some regimes have less than 2 trials": expected
                warnings.simplefilter("ignore")
                figures["param_importances"] = vis.plot_param_importances(study)
        except (ValueError, RuntimeError) as error:  # e.g. a parameter with one value only
            notes.append(f"param_importances skipped: {error}")
    else:
        notes.append("param_importances skipped: needs >= 2 complete trials whose "
                     "parameters vary")
    if any(t.params for t in complete):
        figures["parallel_coordinate"] = vis.plot_parallel_coordinate(study)
    else:
        notes.append("parallel_coordinate skipped: the trials have no parameters")
    return figures


def study_figures(study: optuna.Study, notes: list[str] | None = None) -> dict[str, go.Figure]:
    """Every plotly figure of a study, by file-friendly name, in the report's order."""
    notes = [] if notes is None else notes
    figures = learning_curves(study)
    if not curve_trials(study):
        notes.append("learning curves are empty: no trial has finished an epoch")
    figures.update(patch_size_figures(study))
    figures.update(optuna_figures(study, notes))
    return figures


def best_pictures(study: optuna.Study, artifact_root: str | Path,
                  notes: list[str] | None = None) -> dict[str, bytes]:
    """PNG pictures of the best trial's first layer, by name, from the artifact store.

    The best trial is the complete one with the highest max val acc (the table's rank 1).
    Missing weights (no complete trial, an artifact store elsewhere) give {} and a note.
    """
    notes = [] if notes is None else notes
    ranked = ranked_trials(study)
    if not ranked:
        notes.append("first-layer pictures skipped: no complete trial")
        return {}
    best = ranked[0]
    weight = load_first_layer(best, artifact_root)
    if weight is None:
        notes.append(f"first-layer pictures skipped: trial {best.number} has no "
                     f"{WEIGHT_ARTIFACT} in {artifact_root}")
        return {}
    model = study_model(study)
    return {f"{name}_trial{best.number}": picture_png(model, weight, gray)
            for name, gray in picture_variants(model).items()}


def load_first_layer(trial: FrozenTrial, artifact_root: str | Path) -> np.ndarray | None:
    """The trial's first-layer weight from the artifact store, or None when it is not there."""
    artifact_id = trial.user_attrs.get(f"artifact:{WEIGHT_ARTIFACT}")
    if artifact_id is None or not Path(artifact_root).is_dir():
        return None
    store = FileSystemArtifactStore(str(artifact_root))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHT_ARTIFACT
        try:
            download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(path))
        except Exception:  # the store lost it, or it lives on another machine
            return None
        return np.load(path)
