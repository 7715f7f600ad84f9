"""The reproduction report: our five studies beside the published numbers.

Writes DIR/REPORT.md (per experiment: our table, the report's, the validation-test gap in
both, a generated line on which setting won), DIR/figures/fig01..fig18 (the report's 18
figures as offline HTML sharing one plotly.min.js, PNG where a renderer is installed, plus
Optuna's figures of the two searches) and DIR/report.html (everything on one offline page,
the Markdown rendered with its tables as tables).
"""
from __future__ import annotations

import html
from pathlib import Path

import markdown
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from reports.captions import figure_text, picture_text
from reports.figures import best_pictures, learning_curves, optuna_figures, patch_size_figures
from reports.page import Written, _img, write_figures, write_pictures
from reports.table import ReportError, load_study, to_markdown, top_table
from reports.trial_data import trial_value
from spaces import mlpmixer, resnet18
from storage import open_store

# What the report found where it printed no numbers (experiments 1 and 2).
PUBLISHED_FINDINGS = {
    1: "ReLU best; in its plot sigmoid beat tanh (no numbers given).",
    2: "0.001 best; 0.1 and 0.01 diverge or stall; 1e-5 too slow (no numbers given).",
}
PUBLISHED_TOP = {4: resnet18.PUBLISHED_TOP, 5: mlpmixer.PUBLISHED_TOP}
CURVE_ORDER = ("curves_train_loss", "curves_val_loss", "curves_train_acc", "curves_val_acc")
PATCH_ORDER = ("patch_parameters", "patch_train_seconds", "patch_val_seconds")
# The report's Figures 1-18 by experiment: curves of the three grids, the patch-size bars, the
# first-layer pictures of the two searches' best trials.
FIGURES_OF = {1: range(1, 5), 2: range(5, 9), 3: range(9, 16), 4: (16, 17), 5: (18,)}


# (column, trial_value name) of a grid table's measured numbers; seconds per epoch are
# means without the warm-up (first) epoch, which autotunes and fills caches: kept apart.
GRID_COLUMNS = [("epochs run", "epochs_run"), ("parameters", "parameters"),
                ("max train acc", "max_train_acc"), ("max val acc", "max_val_acc"),
                ("test acc", "test_acc"), ("test loss", "test_loss"),
                ("avg train s/epoch", "avg_train_seconds"),
                ("first epoch s", "first_epoch_seconds"), ("avg val s", "avg_val_seconds")]


def grid_table(study, key: str) -> pd.DataFrame:
    """One row per grid value: its trial's state, accuracies, test loss, seconds per epoch."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if key not in t.params or t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        rows.append({key: t.params[key], "state": t.state.name.lower(),
                     **{column: trial_value(t, name) for column, name in GRID_COLUMNS},
                     "note": _note(t)})
    return pd.DataFrame(rows)


def _note(trial: FrozenTrial) -> str:
    """Why a row is special: diverged, or timed while sharing its device with other trials."""
    if trial.user_attrs.get("diverged"):
        return trial.user_attrs["diverged"][:60]
    shared = trial_value(trial, "timing_shared_by", 1)
    return f"timed with {shared} trials sharing a device" if shared > 1 else ""


def gap(frame: pd.DataFrame) -> float | None:
    """Mean of (max val acc - test acc) over the rows that have both."""
    if frame.empty or "test acc" not in frame:
        return None
    both = frame[["max val acc", "test acc"]].dropna().astype(float)
    return float((both["max val acc"] - both["test acc"]).mean()) if len(both) else None


def published_frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows)).rename(columns={
        "batch_size": "batch size", "lr": "learning rate", "weight_decay": "weight decay",
        "embed_dim": "embed dim", "num_blocks": "blocks", "drop_rate": "drop rate",
        "patch_size": "patch size", "max_train_acc": "max train acc",
        "max_val_acc": "max val acc", "test_acc": "test acc", "test_loss": "test loss",
        "avg_train_seconds": "avg train s/epoch", "avg_val_seconds": "avg val s"})
    frame.insert(0, "model", range(1, len(frame) + 1))
    return frame


def _markdown(frame: pd.DataFrame) -> str:
    """Accuracies and losses to 4 decimals, seconds to 2, parameters with separators."""
    if frame.empty:
        return "_no finished trial yet_"
    shown = frame.astype(object).copy()
    for column in frame.columns:
        shown[column] = [_cell(column, v) for v in frame[column]]
    return shown.to_markdown(index=False, disable_numparse=True)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return "-"
    if column == "parameters":
        return f"{int(value):,}"
    if isinstance(value, float) and ("acc" in column or "loss" in column):
        return f"{value:.4f}"
    if isinstance(value, float) and (column.startswith("avg") or column.endswith(" s")):
        return f"{value:.2f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _gap_text(ours: float | None, theirs: float | None) -> str:
    fmt = lambda g: "n/a" if g is None else f"{g:+.4f}"
    text = (f"Validation minus test accuracy, mean over rows: ours {fmt(ours)}, "
            f"published {fmt(theirs)}.")
    if ours is not None and theirs is not None:
        text += (" Our validation images are held out of training, so our gap measures only "
                 "the noise between two samples; a published gap "
                 f"{'far larger than ours' if theirs > ours + 0.05 else 'like ours'} "
                 f"{'points to validation data that overlapped training' if theirs > ours + 0.05 else 'shows no such overlap'}.")
    return text


def winner_line(frame: pd.DataFrame, key: str) -> str:
    """Which grid value won on validation, and whether test agrees."""
    done = frame[frame["state"] == "complete"].dropna(subset=["max val acc"])
    if done.empty:
        return "No grid point completed yet."
    best = done.loc[done["max val acc"].astype(float).idxmax()]
    line = (f"Best on validation: {key}={best[key]} (max val acc {best['max val acc']:.4f}, "
            f"test acc {best['test acc']:.4f}).")
    by_test = done.loc[done["test acc"].astype(float).idxmax()]
    if by_test[key] != best[key]:
        line += f" On test, {key}={by_test[key]} would have won ({by_test['test acc']:.4f})."
    return line


def write_reproduction(storage_url: str, experiments, out_dir: str | Path,
                       study_names: dict[int, str]) -> Written:
    store = open_store(storage_url, readonly=True)  # one for the five studies
    out = Path(out_dir)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = Written()
    md = ["# optuna-search: the report reproduced", "",
          f"Storage: `{storage_url}`. Each section: our study, the report's numbers, the "
          "validation-test gap in both, and which setting won. Figures are in `figures/` "
          "(fig01-fig18 are the report's Figures 1-18) and all on `report.html`.", ""]
    numbered: dict[str, object] = {}   # "fig01_..." -> plotly figure
    pictures: dict[str, bytes] = {}    # "fig16_..." -> PNG
    extra: dict[str, object] = {}      # Optuna's own figures of the searches
    for e in experiments:
        name = study_names[e.number]
        md += [f"## {e.number}. {e.title}", "", f"Study `{name}`.", ""]
        try:
            study = load_study(storage_url, name, store)
        except ReportError as error:
            md += [f"_not run: {error}_", ""]
            written.notes.append(str(error))
            continue
        if e.grid:
            key = next(iter(e.grid))
            first = 1 + 4 * (e.number - 1)  # experiment 1 -> fig01-04, 2 -> 05-08, 3 -> 09-12
            curves = learning_curves(study)
            for offset, fig_name in enumerate(CURVE_ORDER):
                numbered[f"fig{first + offset:02d}_{fig_name}"] = curves[fig_name]
            ours = grid_table(study, key)
            md += ["Ours:", "", _markdown(ours), "", winner_line(ours, key) if len(ours) else "", ""]
            if e.number == 3:
                patch_figures = patch_size_figures(study)
                for offset, fig_name in enumerate(PATCH_ORDER):
                    figure = patch_figures.get(fig_name)
                    if figure is not None:
                        numbered[f"fig{13 + offset:02d}_{fig_name}"] = figure
                theirs = published_frame(mlpmixer.PUBLISHED_PATCH_TABLE).drop(columns="model")
                md += ["Published:", "", _markdown(theirs), "", _gap_text(gap(ours), gap(theirs)), ""]
            else:
                md += [f"Published: {PUBLISHED_FINDINGS[e.number]}", "",
                       _gap_text(gap(ours), None), ""]
        else:
            try:
                ours = top_table(study, 8)
                md += ["Our top 8 (ranked by max validation accuracy):", "", to_markdown(ours), ""]
            except ReportError as error:
                ours = pd.DataFrame()
                md += [f"_{error}_", ""]
            theirs = published_frame(PUBLISHED_TOP[e.number])
            md += ["Published top 8:", "", _markdown(theirs), "", _gap_text(gap(ours), gap(theirs)), ""]
            if len(ours):
                best = ours.iloc[0]
                md += [f"Our best on validation: trial {best['trial']} with test acc "
                       f"{best['test acc']:.4f}; the report's best test acc was "
                       f"{theirs['test acc'].max():.4f}.", ""]
            for fig_name, png in best_pictures(study, store.artifact_folder,
                                               written.notes).items():
                number = 18 if e.model == "mlpmixer" else 16 if "rgb" in fig_name else 17
                pictures[f"fig{number:02d}_{fig_name}"] = png
            extra.update({f"search{e.number}_{k}": v
                          for k, v in optuna_figures(study, written.notes).items()})
    written.paths += write_figures({**numbered, **extra}, figures_dir, written.notes)
    written.paths += write_pictures(pictures, figures_dir)
    wanted = [n for e in experiments for n in FIGURES_OF[e.number]]
    missing = [f"fig{n:02d}" for n in wanted
               if not any(k.startswith(f"fig{n:02d}") for k in (*numbered, *pictures))]
    if missing:
        written.notes.append(f"figures not drawn yet: {', '.join(missing)}")
    md += ["## Figures", "", *(f"- [{k}](figures/{k}.html)" for k in sorted({**numbered, **pictures})), ""]
    (out / "REPORT.md").write_text("\n".join(md), encoding="utf-8")
    (out / "report.html").write_text(_page(md, numbered, extra, pictures), encoding="utf-8")
    written.paths += [out / "REPORT.md", out / "report.html"]
    return written


PAGE_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}"
              # a wide table scrolls inside its own box, so the page never gets wider
              "table{border-collapse:collapse;margin:.5em 0;display:block;max-width:100%;"
              "overflow-x:auto}td,th{border:1px solid #ccc;padding:.2em .5em}"
              "code{background:#f4f4f4}.caption{color:#444;margin:.2em 0 .6em}"
              "img{max-width:100%;height:auto}")


def _page(md: list[str], numbered: dict, extra: dict, pictures: dict) -> str:
    """REPORT.md rendered as HTML (its tables as tables) and every figure, plotly.js once,
    each under a heading and a one-line caption (reports/captions.py)."""
    converter = markdown.Markdown(extensions=["tables"])
    # Any HTML in the text (a study name, an error message) shows as text, never as markup.
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert("\n".join(md))
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>optuna-search "
             f"reproduction</title><style>{PAGE_STYLE}</style></head><body>", body]
    for index, (name, figure) in enumerate({**numbered, **extra}.items()):
        parts.append(_heading(*figure_text(name)))
        parts.append(figure.to_html(full_html=False, include_plotlyjs=index == 0))
    for name, png in pictures.items():
        heading, caption = picture_text(name)
        parts.append(_heading(heading, caption) + _img(png, heading))
    return "\n".join(parts + ["</body></html>"])


def _heading(heading: str, caption: str) -> str:
    return f"<h3>{html.escape(heading)}</h3><p class='caption'>{html.escape(caption)}</p>"
