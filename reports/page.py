"""Write a study's report: the table as Markdown/CSV, one offline HTML page, or a folder of
figures (`optuna-search report` and `optuna-search plots`).

Every HTML file works offline, never loading anything from a network: the one-page report
embeds plotly.js once and its pictures as data: URIs; a folder of figures holds ONE copy of
plotly.js (plotly.min.js, ~4.7 MB) beside its HTML files, which load it by a relative path
(a copy in each file made ten charts 47 MB). PNG copies of the plotly figures need kaleido
and a Chromium (reports/png.py), which are optional: without them they are skipped with one
note.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from reports.figures import best_pictures, study_figures
from reports.pictures import CAPTIONS
from reports.png import PngError, write_pngs
from reports.table import (ReportError, display_table, load_study, study_setting, to_csv,
                           to_markdown, top_table)
from storage import artifact_dir

FORMATS = ("markdown", "csv", "html")


@dataclass
class Written:
    """What `write_plots` wrote, and what it skipped and why (one line each)."""
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_report(storage_url: str, study_name: str, top: int = 8, fmt: str = "markdown",
                  include_pruned: bool = False) -> str:
    """The report of one study as text: Markdown or CSV table, or a whole HTML page."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    study = load_study(storage_url, study_name)
    table = top_table(study, top, include_pruned)
    if fmt == "markdown":
        return to_markdown(table)
    if fmt == "csv":
        return to_csv(table)
    notes: list[str] = []
    figures = study_figures(study, notes)
    pictures = best_pictures(study, artifact_dir(storage_url), notes)
    return page_html(study, table, figures, pictures, notes)


def page_html(study: optuna.Study, table: pd.DataFrame, figures: dict[str, go.Figure],
              pictures: dict[str, bytes], notes: list[str] = ()) -> str:
    """One self-contained page: the table, every figure (one plotly.js copy), the pictures."""
    title = html.escape(f"optuna-search report: {study.study_name}")
    attrs = ", ".join(f"{k}={study_setting(study, k)}" for k in
                      ("model", "space", "fixed", "grid", "epochs", "seed", "data")
                      if study_setting(study, k))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}</style>",
             f"</head><body><h1>{title}</h1><p>{html.escape(attrs)}</p>",
             "<h2>Best trials (ranked by max validation accuracy)</h2>",
             display_table(table).to_html(index=False, escape=True, border=0)]
    parts.append("<h2>Figures</h2>")
    for index, (name, figure) in enumerate(figures.items()):
        # The first figure carries plotly.js; the rest reuse it from the same page.
        parts.append(figure.to_html(full_html=False, include_plotlyjs=index == 0,
                                    div_id=f"figure-{name}"))
    for name, png in pictures.items():
        variant, _, trial = name.rpartition("_trial")
        caption = f"{CAPTIONS.get(variant, variant)} (best trial, number {trial})"
        parts.append(f"<h3>{html.escape(name)}</h3><p>{html.escape(caption)}</p>"
                     f"{_img(png, name)}")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _img(png: bytes, name: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"


def write_plots(storage_url: str, study_name: str, out_dir: str | Path) -> Written:
    """Write every figure of a study into `out_dir` as offline HTML (+ PNG where possible)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out} exists and is not a folder")
    study = load_study(storage_url, study_name)  # fails before anything is written
    written = Written()
    figures = study_figures(study, written.notes)
    pictures = best_pictures(study, artifact_dir(storage_url), written.notes)
    out.mkdir(parents=True, exist_ok=True)
    written.paths += write_figures(figures, out, written.notes)
    written.paths += write_pictures(pictures, out)
    return written


def write_figures(figures: dict[str, go.Figure], out: Path, notes: list[str]) -> list[Path]:
    """NAME.html per figure, plotly.min.js once beside them, and NAME.png where possible."""
    if not figures:
        return []
    # This plotly's own copy, even over an older one left in the folder by another version.
    script = out / "plotly.min.js"
    script.write_text(get_plotlyjs(), encoding="utf-8")
    paths = [script]
    for name, figure in figures.items():
        # "directory": the page loads <script src="plotly.min.js"> from its own folder
        figure.write_html(out / f"{name}.html", include_plotlyjs="directory", full_html=True)
        paths.append(out / f"{name}.html")
    try:
        paths += write_pngs(figures, out)
    except PngError as error:
        notes.append(f"PNG copies of the plotly figures skipped: {error}")
    return paths


def write_pictures(pictures: dict[str, bytes], out: Path) -> list[Path]:
    """NAME.png per picture, and NAME.html showing that file (not a second copy of it)."""
    paths = []
    for name, png in pictures.items():
        (out / f"{name}.png").write_bytes(png)
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name}</title>"
                f"</head><body><img alt='{html.escape(name)}' src='{name}.png'></body></html>")
        (out / f"{name}.html").write_text(page, encoding="utf-8")
        paths += [out / f"{name}.png", out / f"{name}.html"]
    return paths
