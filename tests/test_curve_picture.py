"""A trial's learning curves as SVG pictures for its dashboard page (reports/curve_picture.py):
valid pictures of accuracy and loss for a whole run, a lone epoch, a diverged loss, no epoch,
shaped and lettered to read in the page's 200 x 150 px artifact card."""
from __future__ import annotations

import math
from xml.etree import ElementTree

import pytest

from reports.curve_picture import FONT, HEIGHT, SMALL, WIDTH, nice_ticks, trial_pictures

SVG = "{http://www.w3.org/2000/svg}"
RUN = {"val_acc": [0.25, 0.3, 0.28], "train_acc": [0.2, 0.31, 0.35],
       "val_loss": [2.1, 1.9, 1.95], "train_loss": [2.2, 1.9, 1.7]}
CARD = (200, 150)   # pixels of the picture in the trial page's artifact card


def parse(svg: str) -> ElementTree.Element:
    root = ElementTree.fromstring(svg)   # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    assert (root.get("width"), root.get("height")) == (str(WIDTH), str(HEIGHT))
    return root


def texts(root) -> list[str]:
    return [t.text for t in root.iter(f"{SVG}text")]


def test_a_run_gives_an_accuracy_and_a_loss_picture_with_its_best_epoch():
    pictures = trial_pictures(RUN, 4, best_epoch=2)
    assert list(pictures) == ["acc_curves.svg", "loss_curves.svg"]
    accuracy, loss = (parse(svg) for svg in pictures.values())
    assert texts(accuracy)[0] == "#4 accuracy: val 0.3"       # at the best epoch, 2
    assert texts(loss)[0] == "#4 loss: val 1.9"
    for root in (accuracy, loss):
        assert {"validation", "training", "epoch", "1", "2", "3"} <= set(texts(root))
        lines = list(root.iter(f"{SVG}polyline"))
        assert len(lines) == 2 and sum("stroke-dasharray" in line.attrib for line in lines) == 1
        assert all(len(line.get("points").split()) == 3 for line in lines)   # per epoch
        marks = [line for line in root.iter(f"{SVG}line") if line.get("stroke") == "#888"]
        assert len(marks) == 1                                   # the best epoch's
    assert all(len(svg) < 5000 for svg in pictures.values())      # bytes


def test_the_picture_fills_the_card_and_its_text_reads_there():
    scale = min(CARD[0] / WIDTH, CARD[1] / HEIGHT)
    assert WIDTH * scale == CARD[0] and HEIGHT * scale == CARD[1]   # 4:3, no empty band
    assert SMALL * scale >= 9 and FONT * scale >= 11                # pixels in the card


def test_a_lone_epoch_is_dots_and_a_diverged_loss_keeps_its_finite_points():
    one = trial_pictures({k: v[:1] for k, v in RUN.items()}, 5, best_epoch=1)
    root = parse(one["acc_curves.svg"])
    assert not list(root.iter(f"{SVG}polyline")) and len(list(root.iter(f"{SVG}circle"))) == 2
    diverged = dict(RUN, train_loss=[2.2, math.inf, math.nan])
    root = parse(trial_pictures(diverged, 6)["loss_curves.svg"])
    dots = [c for c in root.iter(f"{SVG}circle") if c.get("fill") == "#D55E00"]
    assert len(dots) == 1                           # the training loss's one finite point
    assert texts(root)[0] == "#6 loss"              # no best epoch known: no value


def test_no_epoch_says_so():
    for svg in trial_pictures({}, 7).values():
        assert "no epoch finished" in texts(parse(svg))


@pytest.mark.parametrize("low, high", [(0.1, 0.31), (1.7, 2.2), (0.5, 0.5), (0, 600)])
def test_ticks_are_round_and_span_the_values(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 2 <= len(ticks) <= 7
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1
    step = steps.pop()
    assert round(step / 10 ** math.floor(math.log10(step)), 9) in (1, 2, 5)
