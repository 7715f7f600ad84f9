"""PNG copies of plotly figures: kaleido 1.x drives ONE headless Chromium for all of them.

Optional (`pip install 'optuna-search[png]'`): kaleido, plus a Chromium on this machine,
found through BROWSER_PATH or Debian's /usr/bin/chromium (`apt-get install chromium`).
plotly.io.write_images renders every figure in one browser session: one browser per figure
(figure.write_image) took ~4.4 s a figure on a 2-core machine, one session 6-7.5 s for 7.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import plotly.graph_objects as go

from reports.style import for_print
from storage import first_line

PNG_WIDTH, PNG_HEIGHT = 1000, 600   # pixels: readable text, legend below the plot
DEBIAN_CHROMIUM = "/usr/bin/chromium"


class PngError(RuntimeError):
    """No PNG renderer here, or it failed; the message says why in one line."""


def chromium_path() -> str | None:
    """The browser kaleido will drive: $BROWSER_PATH, else a Chromium or Chrome on PATH."""
    explicit = os.environ.get("BROWSER_PATH")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return DEBIAN_CHROMIUM if Path(DEBIAN_CHROMIUM).is_file() else None


def missing_renderer() -> str | None:
    """Why PNGs cannot be written here, or None when kaleido and a Chromium are present."""
    if importlib.util.find_spec("kaleido") is None:
        return "kaleido is not installed (pip install 'optuna-search[png]')"
    if chromium_path() is None:
        return ("kaleido finds no Chromium (apt-get install chromium, or set BROWSER_PATH "
                "to a Chrome/Chromium executable)")
    return None


def write_pngs(figures: dict[str, go.Figure], out: Path) -> list[Path]:
    """out/NAME.png for every figure, PNG_WIDTH x PNG_HEIGHT, in one browser session; a
    still picture says nothing of hovering (style.for_print)."""
    reason = missing_renderer()
    if reason:
        raise PngError(reason)
    if not figures:
        return []
    import plotly.io as pio
    # choreographer (kaleido's browser driver) reads BROWSER_PATH before searching PATH
    os.environ.setdefault("BROWSER_PATH", chromium_path())
    paths = [out / f"{name}.png" for name in figures]
    try:
        pio.write_images([for_print(f) for f in figures.values()], paths, width=PNG_WIDTH,
                         height=PNG_HEIGHT)
    except Exception as error:  # a browser that will not start, a renderer crash
        raise PngError(f"{type(error).__name__}: {first_line(error, 150)}") from error
    return paths
