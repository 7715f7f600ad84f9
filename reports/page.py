"""Write a study's report: the table as Markdown/CSV, one offline HTML page, or a folder of
figures (`optuna-search report` and `optuna-search plots`).

Every HTML file works offline: plotly.js is embedded (include_plotlyjs=True), never loaded
from a CDN, and pictures are data: URIs. PNG copies of the plotly figures need a static
renderer (kaleido), which is optional: without it they are skipped with one note.
"""
from __future__ import annotations

import base64
import html
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go

from reports.figures import best_pictures, study_figures
from reports.pictures import CAPTIONS
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
    for name, png in pictures.items():
        (out / f"{name}.png").write_bytes(png)
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name}</title>"
                f"</head><body>{_img(png, name)}</body></html>")
        (out / f"{name}.html").write_text(page, encoding="utf-8")
        written.paths += [out / f"{name}.png", out / f"{name}.html"]
    return written


def write_figures(figures: dict[str, go.Figure], out: Path, notes: list[str]) -> list[Path]:
    """NAME.html per figure (plotly.js embedded) and NAME.png when kaleido can render it."""
    paths = []
    png_ok = importlib.util.find_spec("kaleido") is not None
    if not png_ok and figures:
        notes.append("PNG copies of the plotly figures skipped: kaleido is not installed "
                     "(pip install kaleido)")
    for name, figure in figures.items():
        path = out / f"{name}.html"
        figure.write_html(path, include_plotlyjs=True, full_html=True)
        paths.append(path)
        if png_ok:
            try:
                figure.write_image(out / f"{name}.png")
                paths.append(out / f"{name}.png")
            except Exception as error:  # kaleido present but no browser for it, etc.
                notes.append(f"PNG copies skipped: {type(error).__name__}: "
                             f"{str(error).splitlines()[0][:150] if str(error) else ''}")
                png_ok = False
    return paths
