"""One trial's learning curves as two small SVG pictures, for its page in optuna-dashboard.

The dashboard's trial page shows a trial's image artifacts (any image/* type, in an <img>),
each in a card 200 px wide with a 150 px high picture and no way to enlarge it (its download
button gives the file); it knows nothing of a trial's curves (its own per-trial plot is the
intermediate values alone). So each finished or pruned trial uploads two pictures
(search/objective.py), each one panel drawn 4:3 with large text so that it reads in that
card: acc_curves.svg (validation and training accuracy against epoch) and
loss_curves.svg (the losses), the best validation epoch marked. SVG is text written here in a
millisecond, with no browser, plotting library or font files (the viewer's browser draws
it), and 3-4 KB; it has the colours of the report's curves (reports/style.py).
"""
from __future__ import annotations

import html
import math

WIDTH, HEIGHT = 400, 300     # 4:3: the card shows it whole, at half size
LEFT, RIGHT, TOP, BOTTOM = 70, 384, 66, 250   # the plot area, pixels
FONT, SMALL = 22, 18         # title; ticks and legend (11 and 9 px in the card)
PICTURES = {  # file name -> (what it shows, (validation key, training key))
    "acc_curves.svg": ("accuracy", ("val_acc", "train_acc")),
    "loss_curves.svg": ("loss", ("val_loss", "train_loss")),
}
# reports/style.py's first two BEST_COLOURS (blue, vermilion); not imported from there, as it
# imports plotly (~1 s), and the search process draws these pictures.
VALIDATION, TRAINING = "#0072B2", "#D55E00"
DASH = " stroke-dasharray='9 6'"   # training: dashed
MARKERS_UP_TO = 30           # epochs: beyond this, lines without a marker on each point


def trial_pictures(curves: dict[str, list[float]], number: int,
                   best_epoch: int | None = None) -> dict[str, str]:
    """File name -> SVG text of the trial's two pictures."""
    pictures = {}
    for filename, (what, keys) in PICTURES.items():
        best = _best(curves.get(keys[0]) or [], best_epoch)
        title = f"#{number} {what}" + (f": val {best:.3g}" if best is not None else "")
        pictures[filename] = curves_svg(curves, keys, title, best_epoch)
    return pictures


def _best(values: list[float], best_epoch: int | None) -> float | None:
    """The validation value at the best epoch (the one whose weights were tested)."""
    if best_epoch and 1 <= best_epoch <= len(values):
        value = values[best_epoch - 1]
        return value if value is not None and math.isfinite(value) else None
    return None


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About `count` round numbers spanning [low, high] (1, 2 or 5 times a power of ten)."""
    if not high > low:
        low, high = low - 0.5 * (abs(low) or 1), high + 0.5 * (abs(high) or 1)
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    value, ticks = math.floor(low / step) * step, []
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


def curves_svg(curves: dict[str, list[float]], keys: tuple[str, str], title: str,
               best_epoch: int | None = None) -> str:
    """One panel: the validation (solid) and training (dashed) curves of `keys`."""
    series = {key: [v if v is not None and math.isfinite(v) else None
                    for v in (curves.get(key) or [])] for key in keys}
    epochs = max(len(values) for values in series.values())
    values = [v for s in series.values() for v in s if v is not None]
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
             f"viewBox='0 0 {WIDTH} {HEIGHT}' font-family='sans-serif' font-size='{SMALL}'>",
             f"<rect width='{WIDTH}' height='{HEIGHT}' fill='white'/>",
             f"<text x='10' y='28' font-size='{FONT}' fill='#222'>{html.escape(title)}</text>",
             _legend()]
    if not values:
        parts.append(f"<text x='{LEFT}' y='{(TOP + BOTTOM) / 2}' fill='#777'>"
                     "no epoch finished</text>")
    else:
        parts.append(_plot(series, keys, epochs, values, best_epoch))
    parts.append("</svg>")
    return "\n".join(parts)


def _legend() -> str:
    items, y = [], 54
    for x, colour, dash, label in ((LEFT, VALIDATION, "", "validation"),
                                   (LEFT + 160, TRAINING, DASH, "training")):
        items.append(f"<line x1='{x}' y1='{y - 6}' x2='{x + 32}' y2='{y - 6}' "
                     f"stroke='{colour}' stroke-width='3'{dash}/>"
                     f"<text x='{x + 38}' y='{y}' fill='#333'>{label}</text>")
    return "".join(items)


def _plot(series, keys, epochs, values, best_epoch) -> str:
    ticks = nice_ticks(min(values), max(values))
    low, high = ticks[0], ticks[-1]

    def x_of(epoch: int) -> float:   # a lone epoch in the middle
        return LEFT + (RIGHT - LEFT) * (0.5 if epochs == 1 else (epoch - 1) / (epochs - 1))

    def y_of(value: float) -> float:
        return BOTTOM - (BOTTOM - TOP) * (value - low) / (high - low)

    out = []
    for tick in ticks:  # horizontal grid lines with their values
        y = y_of(tick)
        out.append(f"<line x1='{LEFT}' y1='{y:.1f}' x2='{RIGHT}' y2='{y:.1f}' stroke='#e3e3e3'/>"
                   f"<text x='{LEFT - 8}' y='{y + 6:.1f}' text-anchor='end' fill='#555'>"
                   f"{tick:g}</text>")
    step = max(1, math.ceil(epochs / 6))   # at most ~6 epoch ticks
    for epoch in sorted({*range(1, epochs + 1, step), epochs}):
        out.append(f"<text x='{x_of(epoch):.1f}' y='{BOTTOM + 24}' text-anchor='middle' "
                   f"fill='#555'>{epoch}</text>")
    out.append(f"<text x='{LEFT}' y='{BOTTOM + 46}' fill='#555'>epoch</text>"
               f"<line x1='{LEFT}' y1='{BOTTOM}' x2='{RIGHT}' y2='{BOTTOM}' stroke='#999'/>")
    if best_epoch and 1 <= best_epoch <= epochs:   # the epoch whose weights were tested
        x = x_of(best_epoch)
        out.append(f"<line x1='{x:.1f}' y1='{TOP}' x2='{x:.1f}' y2='{BOTTOM}' stroke='#888' "
                   "stroke-width='1.5' stroke-dasharray='3 4'/>")
    for key, colour, dash in ((keys[1], TRAINING, DASH), (keys[0], VALIDATION, "")):
        points = [(x_of(e), y_of(v)) for e, v in enumerate(series[key], start=1)
                  if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f"<polyline points='{path}' fill='none' stroke='{colour}' "
                       f"stroke-width='3'{dash}/>")
        if len(points) == 1 or epochs <= MARKERS_UP_TO:
            out += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{colour}'/>"
                    for x, y in points]
    return "".join(out)
