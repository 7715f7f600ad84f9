"""Study -> the report's plotly figures, read from the storage alone (no retraining).

- learning curves (reports/curves.py): val/train accuracy and loss against epoch
  (Figures 1-12);
- against patch size, when it varies: parameters, avg train and val seconds (Figures 13-15);
- Optuna's optimization history, parameter importances and parallel coordinates, with the
  objective named as the study names it (`val_acc`).
Every figure has the look of reports/style.py. The first-layer pictures of the best trial
come from the artifact store (best_pictures).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.trial import FrozenTrial, TrialState

from reports.curves import curve_trials, learning_curves
from reports.pictures import picture_png, picture_variants
from reports.style import legend_below, metric_name, tidy
from reports.table import ranked_trials, study_model
from reports.trial_data import artifact_id, trial_config, trial_value

PATCH_FIGURES = {  # figure name -> (trial_value name, title, y-axis title with unit)
    "patch_parameters": ("parameters", "parameters against patch size", "parameters (count)"),
    "patch_train_seconds": ("avg_train_seconds", "training time per epoch against patch size",
                            "training time per epoch (seconds)"),
    "patch_val_seconds": ("avg_val_seconds", "validation time against patch size",
                          "validation time per epoch (seconds)"),
}
READING_ORDER = ("curves_val_acc", "optimization_history", "curves_train_acc",
                 "curves_val_loss", "curves_train_loss")   # then the others as made
WEIGHT_ARTIFACT = "first_layer.npy"  # uploaded by search/objective.py while the trial trains


def patch_size_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Parameters and seconds per epoch against patch size, when patch size varies.

    Values are the mean over the complete trials of each patch size (one per size in a grid).
    """
    trials = ranked_trials(study)
    rows = [{"patch size": trial_config(t).get("patch_size"),
             **{attr: trial_value(t, attr) for attr, _, _ in PATCH_FIGURES.values()}}
            for t in trials]
    frame = pd.DataFrame(rows).dropna(subset=["patch size"]) if rows else pd.DataFrame()
    if frame.empty or frame["patch size"].nunique() < 2:
        return {}
    means = frame.groupby("patch size").mean(numeric_only=True).sort_index()
    # Trials that trained side by side on one device (--workers, --gpus-per-trial) measured
    # shared time: the seconds figures say so.
    shared = max((trial_value(t, "timing_shared_by", 1) for t in trials), default=1)
    figures = {}
    for name, (attr, title, y_title) in PATCH_FIGURES.items():
        if attr != "parameters" and shared > 1:
            title += f" (measured with up to {shared} trials sharing a device)"
        # Sizes as text make a category axis with one bar each, in numeric order (sort_index)
        figure = go.Figure(go.Bar(x=[str(int(p)) for p in means.index], y=means[attr].tolist(),
                                  text=[f"{v:,.0f}" if attr == "parameters" else f"{v:.2f}"
                                        for v in means[attr]], textposition="outside",
                                  marker_color="#0072B2", cliponaxis=False))
        figures[name] = tidy(figure, title, "patch size (pixels)", y_title)
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
    target = metric_name(study)
    figures = {"optimization_history": vis.plot_optimization_history(study, target_name=target)}
    varying = {k for k in {k for t in complete for k in t.params}
               if len({repr(t.params.get(k)) for t in complete}) > 1}
    if len(complete) >= 2 and varying:
        try:
            with warnings.catch_warnings():  # "some regimes have less than 2 trials": expected
                warnings.simplefilter("ignore")
                figures["param_importances"] = vis.plot_param_importances(study,
                                                                        target_name=target)
        except (ValueError, RuntimeError) as error:  # e.g. a parameter with one value only
            notes.append(f"param_importances skipped: {error}")
    else:
        notes.append("param_importances skipped: needs >= 2 complete trials whose "
                     "parameters vary")
    if any(t.params for t in complete):
        figures["parallel_coordinate"] = vis.plot_parallel_coordinate(study,
                                                                      target_name=target)
    else:
        notes.append("parallel_coordinate skipped: the trials have no parameters")
    return {name: legend_below(figure) for name, figure in figures.items()}


def study_figures(study: optuna.Study, notes: list[str] | None = None) -> dict[str, go.Figure]:
    """Every plotly figure of a study, by file-friendly name, in the report's order: the
    objective first (validation accuracy per epoch, then per trial: READING_ORDER), then the
    other curves, the patch-size figures and the rest of Optuna's."""
    notes = [] if notes is None else notes
    figures = learning_curves(study)
    if not curve_trials(study):
        notes.append("learning curves are empty: no trial has finished an epoch")
    figures.update(patch_size_figures(study))
    figures.update(optuna_figures(study, notes))
    first = [name for name in READING_ORDER if name in figures]
    return {name: figures[name] for name in first + [n for n in figures if n not in first]}


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
                     f"{WEIGHT_ARTIFACT} in the study's artifact folder")  # no machine path
        return {}
    model = study_model(study)
    return {f"{name}_trial{best.number}": picture_png(model, weight, gray)
            for name, gray in picture_variants(model).items()}


def load_first_layer(trial: FrozenTrial, artifact_root: str | Path) -> np.ndarray | None:
    """The trial's first-layer weight from the artifact store, or None when it is not there."""
    stored_id = artifact_id(trial, WEIGHT_ARTIFACT)
    if stored_id is None or not Path(artifact_root).is_dir():
        return None
    store = FileSystemArtifactStore(str(artifact_root))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHT_ARTIFACT
        try:
            download_artifact(artifact_store=store, artifact_id=stored_id, file_path=str(path))
        except Exception:  # the store lost it, or it lives on another machine
            return None
        return np.load(path)
