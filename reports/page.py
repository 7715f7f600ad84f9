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

from reports.budget import budget_line
from reports.captions import figure_text, picture_text
from reports.figures import best_pictures, study_figures
from reports.png import PngError, write_pngs
from reports.table import (DATA_SIZES_ATTR, REPEAT_ATTR, ReportError, constant_columns,
                           display_table, load_study, study_model, study_setting, text_columns,
                           to_csv, to_markdown, top_table)
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
        return f"{budget_line(study)}\n\n{to_markdown(table)}"
    if fmt == "csv":
        return to_csv(table)
    notes: list[str] = []
    figures = study_figures(study, notes)
    pictures = best_pictures(study, artifact_dir(storage_url), notes)
    return page_html(study, table, figures, pictures, notes)


PAGE_STYLE = (  # the table scrolls inside its own box: the page itself never gets wider
    "body{font-family:sans-serif;margin:1.5em;max-width:1200px;line-height:1.4}"
    "h1{font-size:1.5em}.caption{color:#444;margin:.2em 0 .6em}"
    ".table-box{max-width:100%;overflow-x:auto}table{border-collapse:collapse;font-size:.9em}"
    "td,th{border:1px solid #ccc;padding:.2em .4em}th{white-space:normal;vertical-align:bottom}"
    "td.number,th.number{text-align:right}td.text,th.text{text-align:left}"
    "td{white-space:nowrap}img{max-width:100%;height:auto}figure{margin:1.5em 0}")


def page_html(study: optuna.Study, table: pd.DataFrame, figures: dict[str, go.Figure],
              pictures: dict[str, bytes], notes: list[str] = ()) -> str:
    """One self-contained page: a header saying what was run on what, the table, every
    figure (one plotly.js copy) and picture, each with a heading and a one-line caption."""
    title = html.escape(f"optuna-search report: {study.study_name}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{PAGE_STYLE}</style></head><body><h1>{title}</h1>",
             *(f"<p class='header'>{html.escape(line)}</p>" for line in header_lines(study)),
             "<h2>Best trials</h2>", table_html(table)]
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
    """What was run on what: the model and search, the data and its split, the trials."""
    setting = lambda key: study_setting(study, key)  # noqa: E731
    search = ", ".join(f"{k} {setting(k)}" for k in ("space", "sampler", "pruner")
                       if setting(k))
    changed = "; ".join(f"{k} {setting(k)}" for k in ("fixed", "grid") if setting(k))
    lines = [f"Model {study_model(study)}, {setting('epochs') or '?'} epochs per trial"
             f"{', ' + search if search else ''}{'; ' + changed if changed else ''}"
             f"{', seed ' + str(setting('seed')) if setting('seed') is not None else ''}."]
    sizes = study.user_attrs.get(DATA_SIZES_ATTR)
    split = (f"{sizes['train']:,} train / {sizes['val']:,} validation / {sizes['test']:,} "
             "test images" if sizes else "split sizes not recorded (a study run before they "
             "were)")
    lines.append(f"Data: {setting('data') or 'not recorded'}, {split}.")
    states = pd.Series([t.state.name.lower() for t in study.trials]).value_counts()
    repeats = sum(REPEAT_ATTR in t.user_attrs for t in study.trials)
    lines.append("Trials: " + (", ".join(f"{n} {s}" for s, n in states.items()) or "none")
                 + (f" ({repeats} of them repeats of a trained configuration)"
                    if repeats else "") + ".")
    lines.append(budget_line(study))
    return lines


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
