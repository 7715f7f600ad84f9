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
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from reports.audit import audit_html, audit_markdown, read_audit
from reports.captions import figure_text, picture_text
from reports.counts import count_trials
from reports.figures import best_pictures, study_figures
from reports.png import PngError, write_pngs
from reports.study_data import (DATA_SIZES_ATTR, budget_text, data_name, model_name,
                                sizes_text, study_setting)
from reports.summary import parameters_text, time_text
from reports.table import (ReportError, constant_columns, display_table, load_study,
                           study_model, text_columns, to_csv, to_markdown, to_text,
                           top_table)
from storage import artifact_dir, open_store

FORMATS = ("text", "markdown", "csv", "html")   # text: for a terminal (to_text)


@dataclass
class Written:
    """What `write_plots` wrote, and what it skipped and why (one line each)."""
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render_report(storage_url: str, study_name: str, top: int = 8, fmt: str = "markdown",
                  include_pruned: bool = False, width: int = 80) -> str:
    """The report of one study as text: a table for a terminal `width` columns wide (its
    sentences wrapped to it), Markdown or CSV, or a whole HTML page."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    store = open_store(storage_url, readonly=True)
    study = load_study(storage_url, study_name, store=store)
    table = top_table(study, top, include_pruned)
    audit = read_audit(store, study, top)   # STUDY-audit's findings, where it has one
    if fmt == "text":
        counts = count_trials(study.get_trials(deepcopy=False)).summary()
        lines = textwrap.wrap(f"Study {study.study_name!r}, {study_model(study)}: {counts}.",
                              width, subsequent_indent="    ")
        return "\n".join([*lines, *to_text(table, width)]) + (
            f"\n\n{audit_markdown(audit)}" if audit else "")
    if fmt == "markdown":
        return to_markdown(table) + (f"\n\n{audit_markdown(audit)}" if audit else "")
    if fmt == "csv":
        return to_csv(table)
    notes: list[str] = []
    figures = study_figures(study, notes)
    pictures = best_pictures(study, artifact_dir(storage_url), notes)
    return page_html(study, table, figures, pictures, notes,
                     sections=[audit_html(audit)] if audit else [])


PAGE_STYLE = (  # the table scrolls inside its own box: the page itself never gets wider
    "body{font-family:sans-serif;margin:1.5em;max-width:1200px;line-height:1.4}"
    "h1{font-size:1.5em}.caption{color:#444;margin:.2em 0 .6em}"
    "ul.header{list-style:none;padding:0;margin:0 0 1em}ul.header li{margin:.25em 0}"
    ".table-box{max-width:100%;overflow-x:auto}table{border-collapse:collapse;font-size:.9em}"
    "td,th{border:1px solid #ccc;padding:.2em .4em}th{white-space:normal;vertical-align:bottom}"
    "td.number,th.number{text-align:right}td.text,th.text{text-align:left}"
    "td{white-space:nowrap}img{max-width:100%;height:auto}figure{margin:1.5em 0}")


def page_html(study: optuna.Study, table: pd.DataFrame, figures: dict[str, go.Figure],
              pictures: dict[str, bytes], notes: list[str] = (), sections: list[str] = ()
              ) -> str:
    """One self-contained page: a header saying what was run on what, the table, `sections`
    (HTML: the pruning audit), every figure (one plotly.js copy) and picture, each with a
    heading and a one-line caption."""
    title = html.escape(f"optuna-search report: {study.study_name}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{PAGE_STYLE}</style></head><body><h1>{title}</h1>",
             header_html(header_lines(study)), "<h2>Best trials</h2>", table_html(table),
             *sections]
    parts.append("<h2>Figures</h2>")
    for index, (name, figure) in enumerate(figures.items()):
        heading, caption = figure_text(name)
        # The first figure carries plotly.js; the rest reuse it from the same page.
        parts.append(f"<figure><h3>{html.escape(heading)}</h3><p class='caption'>"
                     f"{html.escape(caption)}</p>" + figure.to_html(
                         full_html=False, include_plotlyjs=index == 0,
                         div_id=f"figure-{name}") + "</figure>")
    for name, png in pictures.items():
        heading, caption = picture_text(name)
        parts.append(f"<figure><h3>{html.escape(heading)}</h3><p class='caption'>"
                     f"{html.escape(caption)}</p>{_img(png, heading)}</figure>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def header_lines(study: optuna.Study) -> list[str]:
    """What was run on what, one line each, in words (never a machine path): the model and
    its size, the search's budget, the data and its split, the trials per state (as every
    summary counts them: reports/counts.py), the time it took. The dashboard's study note
    says the same lines (reports/study_note.py); a new fact is a line added here."""
    trials = study.get_trials(deepcopy=False)
    size = parameters_text(trials)
    split = (sizes_text(study.user_attrs.get(DATA_SIZES_ATTR))
             or "split sizes not recorded (a study run before they were)")
    lines = [f"Model: {model_name(study_model(study))}{', ' + size if size else ''}.",
             f"Search: {budget_text(study)}.",
             f"Data: {data_name(study_setting(study, 'data'))}, {split}.",
             f"Trials: {count_trials(trials).summary()}."]
    time = time_text(trials)
    if time:
        lines.append(f"Time: {time}.")
    return lines


def header_html(lines: list[str]) -> str:
    """The header's lines as a list, each led by its label in bold ('Model: ...')."""
    items = []
    for line in lines:
        label, colon, text = line.partition(": ")
        items.append(f"<li><b>{html.escape(label)}:</b> {html.escape(text)}</li>" if colon
                     else f"<li>{html.escape(line)}</li>")
    return f"<ul class='header'>{''.join(items)}</ul>"


def table_html(table: pd.DataFrame) -> str:
    """The table in a box that scrolls sideways on a narrow screen; the columns with one
    value in every row said once above it; words left, numbers right."""
    constant = constant_columns(table)
    shown = display_table(table.drop(columns=list(constant)))
    text = set(text_columns(table))
    caption = "Ranked by max validation accuracy (chosen on validation, never on test)."
    if constant:
        caption += " In every row: " + ", ".join(f"{k} {v}" for k, v in constant.items()) + "."
    kind = {c: "text" if c in text else "number" for c in shown.columns}
    head = "".join(f"<th class='{kind[c]}'>{html.escape(c)}</th>" for c in shown.columns)
    rows = "".join("<tr>" + "".join(f"<td class='{kind[c]}'>{html.escape(str(v))}</td>"
                                    for c, v in row.items()) + "</tr>"
                   for _, row in shown.iterrows())
    return (f"<p class='caption'>{html.escape(caption)}</p><div class='table-box'><table>"
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


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
        heading, caption = (html.escape(text) for text in picture_text(name))
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{heading}</title>"
                f"<style>{PAGE_STYLE}</style></head><body><figure><h1>{heading}</h1>"
                f"<img alt='{heading}' src='{name}.png'><figcaption class='caption'>"
                f"{caption}</figcaption></figure></body></html>")
        (out / f"{name}.html").write_text(page, encoding="utf-8")
        paths += [out / f"{name}.png", out / f"{name}.html"]
    return paths
