"""reports: the top-k table, the figures, the first-layer pictures, the offline page, and the
`report` / `plots` commands. Studies are built with optuna.trial.create_trial and fake
user_attrs (no training), except one end-to-end run of a 2-trial MLP search."""
from __future__ import annotations

import datetime
import io
import random
import re
import os
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from PIL import Image

from reports import pictures
from reports.dashboard_figures import register_dashboard_figures
from reports.figures import best_pictures, learning_curves, patch_size_figures, study_figures
from reports.page import render_report, write_plots
from reports.table import ReportError, columns, to_csv, to_markdown, top_table
from search.cli import main
from spaces import get_space
from storage import artifact_dir, artifact_store
from storage.internals import study_system_attrs

from helpers import run_in_terminal, skip_or_fail, table_rows

optuna.logging.set_verbosity(optuna.logging.WARNING)
COMMON = ["rank", "trial", "batch size", "learning rate", "optimizer", "momentum",
          "weight decay", "schedule"]
METRICS = ["max train acc", "max val acc", "test acc", "epochs run"]


def fake_trial(model: str, rng: random.Random, state=TrialState.COMPLETE, epochs=3,
               **chosen) -> optuna.trial.FrozenTrial:
    """A trial as search/objective.py left it before the move to system attrs: params and
    everything else as user attrs, which reports still read (tests/test_trial_data.py checks
    the new layout reads the same)."""
    space = get_space(model)
    params = {k: chosen.get(k, rng.choice(v)) for k, v in space.lists.items()}
    if "embed_dim" in space.int_ranges:
        params["embed_dim"] = chosen.get("embed_dim", 128)
    if params["optimizer"] == "sgd":
        params.pop("momentum")
    distributions = {k: CategoricalDistribution(list(space.lists.get(k, (params[k],))))
                     for k in params}
    config = {**space.defaults.as_dict(), **params, "patch_size": chosen.get("patch_size", 4)}
    config["hidden_sizes"] = list(config["hidden_sizes"])
    val = chosen.get("val_acc") or [round(rng.uniform(0.1, 0.9), 4) for _ in range(epochs)]
    curves = {"train_loss": [2.0 - e / 10 for e in range(epochs)], "val_loss": [1.5] * epochs,
              "train_acc": [round(rng.uniform(0.1, 0.9), 4) for _ in range(epochs)],
              "val_acc": val, "train_seconds": [1.0] * epochs, "val_seconds": [0.1] * epochs}
    attrs = {"config": config, "curves": curves, "epochs_run": epochs,
             "max_train_acc": max(curves["train_acc"]), "max_val_acc": max(val),
             "parameters": chosen.get("parameters", 1000),
             "avg_train_seconds": chosen.get("train_s", 1.0), "avg_val_seconds": 0.1}
    attrs.update(chosen.get("attrs", {}))
    if state == TrialState.COMPLETE:
        attrs["test_acc"] = chosen.get("test_acc", round(rng.uniform(0.1, 0.9), 4))
    return optuna.trial.create_trial(
        state=state, value=max(val) if state == TrialState.COMPLETE else None,
        params=params, distributions=distributions, user_attrs=attrs,
        intermediate_values={e + 1: v for e, v in enumerate(val)})


def record_settings(study: optuna.Study, model: str, grid=None) -> None:
    """What search/study.py records: the spec the study was made with, in one attribute."""
    study.set_user_attr("optuna_search", {"spec": {"model": model, "grid": grid}})


def make_study(model: str, complete: int, pruned: int = 0, storage=None, name="s",
               grid=None, **chosen) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    with warnings.catch_warnings():  # "set_metric_names is experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_acc"])  # as the search names its objective
    record_settings(study, model, grid)
    rng = random.Random(complete * 100 + pruned)
    for _ in range(complete):
        study.add_trial(fake_trial(model, rng, **chosen))
    for _ in range(pruned):
        study.add_trial(fake_trial(model, rng, TrialState.PRUNED, epochs=1, **chosen))
    return study


# ---- the table -------------------------------------------------------------------------

@pytest.mark.parametrize("complete", [3, 12])
def test_table_has_the_best_min_8_complete_trials_sorted_by_max_val_acc(complete):
    study = make_study("resnet18", complete, pruned=2)
    table = top_table(study, top=8)
    assert len(table) == min(8, complete)
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert table["max val acc"].is_monotonic_decreasing
    by_number = {t.number: t for t in study.trials}
    assert all(by_number[n].state == TrialState.COMPLETE for n in table["trial"])
    ranked = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                    key=lambda t: -t.user_attrs["max_val_acc"])[:8]
    assert list(table["trial"]) == [t.number for t in ranked]
    for _, row in table.iterrows():  # every number is the stored one
        trial = by_number[row["trial"]]
        for column, attr in [("max train acc", "max_train_acc"), ("max val acc", "max_val_acc"),
                             ("test acc", "test_acc"), ("epochs run", "epochs_run")]:
            assert row[column] == trial.user_attrs[attr]
        assert row["learning rate"] == trial.params["lr"]
        assert row["batch size"] == trial.params["batch_size"]


def test_rows_are_ranked_on_validation_never_on_test():
    study = optuna.create_study(direction="maximize")
    record_settings(study, "resnet18")
    rng = random.Random(0)
    study.add_trial(fake_trial("resnet18", rng, test_acc=0.99))  # best on test only
    study.add_trial(fake_trial("resnet18", rng, test_acc=0.01))
    low, high = sorted(study.trials, key=lambda t: t.user_attrs["max_val_acc"])
    table = top_table(study)
    assert list(table["trial"]) == [high.number, low.number]


@pytest.mark.parametrize("model, extra", [
    ("resnet18", []),
    ("mlpmixer", ["embed dim", "blocks", "drop rate", "patch size"]),
    ("mlp", ["activation"]),
])
def test_columns_per_model(model, extra):
    table = top_table(make_study(model, 2))
    assert list(table.columns) == COMMON + extra + METRICS
    assert columns(model) == COMMON + extra + METRICS


def test_sgd_momentum_is_blank_and_pruned_trials_join_only_when_asked():
    study = make_study("resnet18", 2, pruned=3, optimizer="sgd")
    table = top_table(study, include_pruned=True)
    assert len(table) == 5 and list(table.columns)[-1] == "state"
    assert sorted(table["state"]) == ["complete"] * 2 + ["pruned"] * 3
    assert table["momentum"].isna().all()
    assert table["test acc"].isna().sum() == 3   # pruned trials are never tested
    markdown = to_markdown(table)
    assert len(markdown.splitlines()) == 2 + 5
    assert all(line.split("|")[6].strip() == "-" for line in markdown.splitlines()[2:])
    assert ",sgd,," in to_csv(table)             # CSV leaves it empty
    assert len(top_table(study)) == 2


def test_a_study_without_complete_trials_is_a_report_error():
    with pytest.raises(ReportError, match="no complete trial"):
        top_table(make_study("mlp", 0, pruned=2))


# ---- figures ---------------------------------------------------------------------------

def test_curve_figures_have_one_trace_per_trial_labelled_by_number():
    study = make_study("mlp", 3, pruned=1)
    figures = learning_curves(study)
    assert list(figures) == ["curves_val_acc", "curves_train_acc", "curves_val_loss",
                             "curves_train_loss"]       # the objective first
    for figure in figures.values():
        per_trial = [t for t in figure.data if t.x != (None,)]  # not the legend-only entry
        assert sorted(int(t.name[1:].split()[0]) for t in per_trial) == [0, 1, 2, 3]
    trial = study.trials[0]
    trace = next(t for t in figures["curves_val_acc"].data if t.name.startswith("#0 "))
    assert list(trace.y) == trial.user_attrs["curves"]["val_acc"]
    assert list(trace.x) == [1, 2, 3]
    assert trace.name == f"#0 ({trial.user_attrs['max_val_acc']:.3f})"


def thirty_trial_study(storage=None, name="s") -> optuna.Study:
    """30 trials as a search leaves them: 24 complete (one diverged to loss ~600), 6 pruned."""
    study = make_study("resnet18", 23, storage=storage, name=name, epochs=5)
    rng = random.Random(3)
    for epochs in (1, 2, 2, 3, 1, 2):
        study.add_trial(fake_trial("resnet18", rng, TrialState.PRUNED, epochs=epochs))
    diverged = fake_trial("resnet18", random.Random(7), epochs=5, val_acc=[0.1] * 5)
    diverged.user_attrs["curves"]["val_loss"] = [50.0, 150.0, 300.0, 450.0, 600.0]
    study.add_trial(diverged)
    return study


def test_best_five_in_colour_the_rest_grey_underneath_with_parameters_on_hover():
    study = thirty_trial_study()
    best = top_table(study, top=5)["trial"].tolist()          # ranked like the table
    figure = learning_curves(study)["curves_val_acc"]
    coloured = [t for t in figure.data if t.showlegend and t.x != (None,)]
    grey = [t for t in figure.data if not t.showlegend]
    assert [int(t.name[1:].split()[0]) for t in sorted(coloured, key=lambda t: t.legendrank)] \
        == best
    assert len({t.line.color for t in coloured}) == 5          # five distinct colours
    assert len(grey) == len(study.trials) - 5 and len({t.line.color for t in grey}) == 1
    assert all(t.line.width < min(c.line.width for c in coloured) for t in grey)
    first_coloured = min(figure.data.index(t) for t in coloured)
    assert all(figure.data.index(t) < first_coloured for t in grey)   # drawn underneath
    others = [t for t in figure.data if t.x == (None,) and t.legendgroup == "others"]  # one
    assert len(others) == 1 and others[0].name == f"other trials ({len(grey)})"
    trial = study.trials[best[0]]
    hover = coloured[-1].hovertemplate                         # the best, drawn last
    assert hover.startswith(f"<b>#{trial.number}</b>")
    assert all(f"{k}=" in hover for k in trial.params)
    assert "pruned" in next(t.hovertemplate for t in grey
                            if study.trials[int(t.name[1:])].state == TrialState.PRUNED)


def test_every_figure_has_units_a_legend_below_and_no_study_name():
    study = thirty_trial_study(name="my-study-7")
    for name, figure in study_figures(study).items():
        layout = figure.layout
        assert "my-study-7" not in (layout.title.text or ""), name
        if name.startswith(("curves", "patch")):
            assert layout.legend.orientation == "h" and layout.legend.yanchor == "bottom"
            assert layout.xaxis.title.text in ("epoch", "patch size (pixels)")
            assert re.search(r"\((cross-entropy|fraction|count|seconds)\)",
                             layout.yaxis.title.text), (name, layout.yaxis.title.text)
        if name == "optimization_history":
            assert layout.legend.orientation == "h"


def test_a_diverged_trial_is_cut_off_a_loss_axis_and_a_wide_bulk_turns_it_logarithmic():
    figures = learning_curves(thirty_trial_study())
    val_loss = figures["curves_val_loss"].layout
    assert val_loss.yaxis.type is None and val_loss.yaxis.range[1] < 2    # 1.5, not 600
    assert "5 points above" in val_loss.annotations[0].text               # its 5 epochs
    assert figures["curves_train_loss"].layout.yaxis.type is None     # 1.6 .. 2.0: linear
    assert figures["curves_val_acc"].layout.yaxis.type is None        # never for accuracy
    study = make_study("resnet18", 0)
    for seed in range(4):   # every curve falls from 3 to 0.003: the bulk spans 1000x
        trial = fake_trial("resnet18", random.Random(seed), epochs=5)
        trial.user_attrs["curves"]["val_loss"] = [3.0, 0.3, 0.03, 0.01, 0.003]
        study.add_trial(trial)
    assert learning_curves(study)["curves_val_loss"].layout.yaxis.type == "log"


def pruned_after_one_epoch_study(storage=None, name="s") -> optuna.Study:
    """The issue's MLP search: 19 trials of 8 epochs (losses under 2.5), 11 pruned after
    epoch 1 with a training loss of 24.75 and a validation loss of ~14."""
    study = make_study("mlp", 0, storage=storage, name=name)
    rng = random.Random(11)
    for number in range(30):
        pruned = number % 2 == 1 and number <= 21   # 11 of them, spread over the search
        trial = fake_trial("mlp", rng, TrialState.PRUNED if pruned else TrialState.COMPLETE,
                           epochs=1 if pruned else 8)
        curves = trial.user_attrs["curves"]
        if pruned:
            curves.update(train_loss=[24.75], val_loss=[14.0 + rng.random()])
        else:
            curves.update(train_loss=[2.3 - 0.1 * e - rng.random() / 10 for e in range(8)],
                          val_loss=[2.2 - 0.08 * e - rng.random() / 10 for e in range(8)])
        study.add_trial(trial)
    return study


def test_every_trial_is_drawn_and_pruned_outliers_do_not_flatten_the_loss_curves():
    study = pruned_after_one_epoch_study()
    figures = learning_curves(study)
    for name, figure in figures.items():
        per_trial = [t for t in figure.data if t.x != (None,)]
        assert len(per_trial) == 30, name                                # every trial drawn
        legend = next(t for t in figure.data if t.x == (None,))
        grey = [t for t in per_trial if not t.showlegend]
        assert legend.name == f"other trials ({len(grey)})" == "other trials (25)"
        for trace in per_trial:
            if len(trace.x) == 1:   # one epoch: a visible marker, not a one-point line
                assert "markers" in trace.mode and trace.marker.size[0] >= 5, name
    for name in ("curves_train_loss", "curves_val_loss"):
        layout = figures[name].layout
        low, high = layout.yaxis.range
        assert high < 3, (name, high)          # the 19 curves (< 2.5) fill the plot ...
        bulk = [v for t in study.trials if t.state == TrialState.COMPLETE
                for v in t.user_attrs["curves"][name[7:]]]
        assert (max(bulk) - min(bulk)) / (high - low) > 0.6, name
        assert layout.annotations[0].text.startswith("▲ 11 points above"), name
        tops = [t for t in figures[name].data if t.x != (None,) and len(t.x) == 1]
        assert all(high - (high - low) / 10 < t.y[0] <= high for t in tops)
        assert all(t.marker.symbol[0] == "triangle-up" for t in tops)   # ... the 11 at the edge
        assert all("customdata" in t.hovertemplate for t in tops)       # hover: the true value


def test_the_legend_has_a_key_for_pruned_trials_dotted_and_after_one_epoch_a_dot():
    figure = learning_curves(thirty_trial_study())["curves_val_acc"]   # pruned at 1, 2, 3
    keys = {t.name: t for t in figure.data if t.x == (None,) and t.legendgroup != "others"}
    assert set(keys) == {"dotted: pruned", "a dot: pruned after epoch 1"}
    assert keys["dotted: pruned"].line.dash == "dot" and keys["dotted: pruned"].mode == "lines"
    assert keys["a dot: pruned after epoch 1"].mode == "markers"
    assert all(t.showlegend for t in keys.values())
    drawn = [t for t in figure.data if t.x != (None,)]
    pruned = [t for t in drawn if "(pruned)" in t.hovertemplate]
    assert pruned and all(t.line.dash == "dot" for t in pruned)          # as the key says
    assert all(t.line.dash == "solid" for t in drawn if t not in pruned)
    complete = learning_curves(make_study("mlp", 4))["curves_val_acc"]
    assert [t.name for t in complete.data if t.x == (None,)] == []     # nothing to key


def test_still_pictures_say_nothing_of_hovering_the_live_figures_do():
    from reports.style import for_print
    figures = study_figures(thirty_trial_study())        # a loss axis cut: an annotation
    live = figures["curves_val_loss"]
    assert "hover" in live.layout.legend.title.text and "hover" in live.layout.annotations[0].text
    for name, figure in figures.items():
        still = for_print(figure).to_json()
        assert "hover a line" not in still and "(hover for" not in still, name
    assert "hover" in live.layout.legend.title.text           # the live figure is unchanged
    assert for_print(live).layout.annotations[0].text.startswith("▲ 5 points above")


def test_optuna_figures_name_the_objective_val_acc():
    figures = study_figures(make_study("resnet18", 4))
    history = figures["optimization_history"]
    assert history.data[0].name == "val_acc" and history.layout.yaxis.title.text == "val_acc"
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert "Objective Value" not in figures[name].to_json(), name
    assert "val_acc" in figures["parallel_coordinate"].to_json()


def test_grid_legend_names_the_grid_value():
    study = optuna.create_study(direction="maximize")
    record_settings(study, "mlp", {"activation": ["relu", "sigmoid", "tanh"]})
    rng = random.Random(1)
    for activation in ("relu", "sigmoid", "tanh"):
        study.add_trial(fake_trial("mlp", rng, activation=activation, batch_size=128,
                                   optimizer="adamw", lr=0.001, momentum=0.9,
                                   weight_decay=0.001))
    traces = learning_curves(study)["curves_train_loss"].data
    names = [t.name for t in sorted(traces, key=lambda t: t.legendrank)]  # legend order
    assert names == ["activation=relu", "activation=sigmoid", "activation=tanh"]
    assert len({t.line.color for t in traces}) == 3                      # every point coloured


def test_patch_size_figures_only_when_patch_size_varies():
    assert patch_size_figures(make_study("mlpmixer", 3)) == {}
    study = optuna.create_study(direction="maximize")
    record_settings(study, "mlpmixer")
    rng = random.Random(2)
    for patch, params, seconds in [(4, 2188298, 28.5), (8, 2175818, 26.8), (16, 2310938, 26.2)]:
        study.add_trial(fake_trial("mlpmixer", rng, patch_size=patch, parameters=params,
                                   train_s=seconds))
    figures = patch_size_figures(study)
    assert list(figures) == ["patch_parameters", "patch_train_seconds", "patch_val_seconds"]
    assert list(figures["patch_parameters"].data[0].x) == ["4", "8", "16"]
    assert list(figures["patch_parameters"].data[0].y) == [2188298, 2175818, 2310938]
    assert list(figures["patch_train_seconds"].data[0].y) == [28.5, 26.8, 26.2]


def test_param_importances_is_skipped_with_a_note_for_one_trial():
    notes = []
    figures = study_figures(make_study("resnet18", 1), notes)
    assert "optimization_history" in figures and "param_importances" not in figures
    assert any("param_importances skipped" in n for n in notes)
    assert "param_importances" in study_figures(make_study("resnet18", 4))


# ---- first-layer pictures --------------------------------------------------------------

def test_resnet18_kernels_are_64_rgb_tiles_of_3x3_on_an_8x8_grid():
    weight = np.random.default_rng(0).normal(size=(64, 3, 3, 3))
    rgb = pictures.tiles("resnet18", weight)
    assert rgb.shape == (64, 3, 3, 3)
    flat = rgb.reshape(64, -1)  # each kernel is min-max scaled on its own
    assert np.allclose(flat.min(1), 0) and np.allclose(flat.max(1), 1)
    assert pictures.tiles("resnet18", weight, grayscale=True).shape == (64, 1, 3, 3)
    scale = pictures.tile_scale(8, 3)
    step = 3 * scale + pictures.GAP                      # one tile and the gap after it
    image = pictures.picture("resnet18", weight)
    assert image.shape == (8 * step + pictures.GAP, 8 * step + pictures.GAP, 3)
    first = image[pictures.GAP:pictures.GAP + 3 * scale:scale,
                  pictures.GAP:pictures.GAP + 3 * scale:scale]        # kernel 0, one pixel each
    assert np.array_equal(first, np.round(rgb[0].transpose(1, 2, 0) * 255))
    png = Image.open(io.BytesIO(pictures.picture_png("resnet18", weight)))
    assert np.array_equal(np.asarray(png.convert("RGB")), image)


@pytest.mark.parametrize("embed_dim, patch, grid, rows, columns",
                         [(256, 4, 8, 8, 16), (128, 8, 4, 8, 8)])
def test_mixer_token_mixing_picture_has_embed_dim_half_tiles_on_the_token_grid(
        embed_dim, patch, grid, rows, columns):
    weight = np.random.default_rng(0).normal(size=(embed_dim // 2, (32 // patch) ** 2))
    assert pictures.tiles("mlpmixer", weight).shape == (embed_dim // 2, 1, grid, grid)
    step = grid * pictures.tile_scale(columns, grid) + pictures.GAP  # every row is full
    assert pictures.picture("mlpmixer", weight).shape == (
        rows * step + pictures.GAP, columns * step + pictures.GAP, 3)
    # row 0 drawn on the grid is the weight row reshaped row-major
    row = weight[0].reshape(grid, grid)
    drawn = pictures.tiles("mlpmixer", weight)[0, 0]
    assert np.allclose(drawn, (row - row.min()) / (row.max() - row.min()), atol=1e-6)


def test_mlp_rows_are_32x32_rgb_tiles():
    weight = np.random.default_rng(0).normal(size=(512, 3 * 32 * 32))
    assert pictures.tiles("mlp", weight).shape == (pictures.MLP_TILES, 3, 32, 32)


@pytest.mark.parametrize("model, shape, grayscale", [
    ("resnet18", (64, 3, 3, 3), False), ("resnet18", (64, 3, 3, 3), True),
    ("mlpmixer", (128, 64), False), ("mlpmixer", (64, 16), False), ("mlpmixer", (32, 4), False),
    ("mlp", (512, 3 * 32 * 32), False)])
def test_every_picture_is_at_least_512_wide_with_a_dark_off_grey_separator(model, shape,
                                                                            grayscale):
    weight = np.random.default_rng(1).normal(size=shape)
    image = pictures.picture(model, weight, grayscale).astype(int)
    assert image.shape[1] >= pictures.MIN_WIDTH == 512
    separator = np.round(np.array(pictures.SEPARATOR) * 255)
    gap, t = pictures.GAP, pictures.tiles(model, weight, grayscale)
    scale = pictures.tile_scale(pictures.grid_columns(len(t)), t.shape[-1])
    edge = gap + t.shape[-1] * scale                      # the first tile's right edge
    assert (image[:gap] == separator).all() and (image[:, :gap] == separator).all()
    assert (image[:, edge:edge + gap] == separator).all()  # the gap after the first column
    inside = image[gap:edge, gap:edge].reshape(-1, 3)
    assert not (inside == separator).all(axis=1).any()    # off the grey scale: never a tile's
    assert separator.max() < 100                          # dark, not white


def study_with_weights(tmp_path, url: str, model: str, shape: tuple, name="s"):
    """Three fake trials, then a best trial 3 whose first-layer weight is in the store."""
    study = make_study(model, 3, storage=url, name=name)
    weight = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.save(tmp_path / "first_layer.npy", weight)
    artifact_id = optuna.artifacts.upload_artifact(
        artifact_store=artifact_store(url), file_path=str(tmp_path / "first_layer.npy"),
        study_or_trial=study)
    study.add_trial(fake_trial(model, random.Random(0), val_acc=[0.5, 0.95],
                               attrs={"artifact:first_layer.npy": artifact_id}))
    assert study.best_trial.number == 3
    return study, weight


def test_best_pictures_come_from_the_artifact_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study, weight = study_with_weights(tmp_path, url, "resnet18", (64, 3, 3, 3))
    best = study.best_trial
    shown = best_pictures(study, artifact_dir(url))
    assert sorted(shown) == [f"first_layer_gray_trial{best.number}",
                             f"first_layer_rgb_trial{best.number}"]
    assert shown[f"first_layer_rgb_trial{best.number}"] == pictures.picture_png("resnet18",
                                                                                  weight)
    notes = []
    assert best_pictures(study, tmp_path / "elsewhere", notes) == {} and notes


def test_reports_never_import_the_trainer():
    code = ("import sys, reports.page, reports.dashboard_figures; "
            "sys.exit('search.train.trainer' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- the page and the commands ---------------------------------------------------------

def test_html_page_is_offline_with_one_plotly_copy(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study_with_weights(tmp_path, url, "mlp", (512, 3 * 32 * 32), name="mlp")
    page = render_report(url, "mlp", fmt="html")
    assert page.count("plotly.js v") == 1           # the library's own banner, embedded once
    # plotly.js itself mentions cdn.plot.ly (map data); no <script> may load from a network
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert page.count("src='data:image/png;base64,") == 1
    assert page.count("<div id=\"figure-") == 7     # 4 curves + 3 Optuna figures
    assert "<table" in page and "max val acc" in page


def report_study(storage: str, name: str = "mlp") -> optuna.Study:
    """The issue's 30-trial MLP search, with the settings and split sizes a search records."""
    study = pruned_after_one_epoch_study(storage=storage, name=name)
    study.set_user_attr("optuna_search", {"spec": {   # where studies made before kept it
        "model": "mlp", "space": "report", "epochs": 8,
        "data": "/work/shared/data/cifar10-jpeg.tar.gz",
        "seed": 0, "sampler": "tpe", "pruner": "median", "grid": None}})
    study.set_user_attr("data_sizes", {"train": 2000, "val": 500, "test": 1000})
    study.set_user_attr("target_trials", 30)
    return study


def test_report_page_says_what_was_run_and_heads_and_captions_every_figure(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    report_study(url)
    page = render_report(url, "mlp", fmt="html")
    header = re.findall(r"<li><b>(\w+):</b> (.*?)</li>", page)
    assert [label for label, _ in header] == ["Model", "Search", "Data", "Trials"], header
    said = dict(header)
    assert said["Model"] == "MLP, 1,000 parameters."
    assert said["Search"].startswith("30 trials of 8 epochs, report space, TPE sampler, "
                                     "median pruning, seed 0")
    assert said["Data"] == ("CIFAR-10 (cifar10-jpeg.tar.gz), 2,000 train / 500 validation / "
                            "1,000 test images.")
    assert said["Trials"] == "19 complete, 11 pruned: 30 trials."
    assert "/work/" not in page and "shared/data" not in page     # no machine path anywhere
    figures = re.findall(r"<figure><h3>(.*?)</h3><p class='caption'>(.*?)</p>", page)
    assert len(figures) == page.count("<figure>") == 7          # 4 curves, 3 Optuna figures
    for heading, caption in figures:
        assert "_" not in heading and caption, (heading, caption)   # no file names
    assert [h for h, _ in figures][:3] == ["Validation accuracy per epoch",  # the objective
                                           "Optimization history", "Training accuracy per epoch"]


def test_the_header_gives_wall_time_seconds_per_epoch_and_sizes_from_the_new_records(tmp_path):
    """A study as this version records it: its spec as a study system attr, results rounded
    on the page with full ones in system attrs, the model's size as a count there."""
    from reports.page import header_lines
    from reports.study_data import RECORD, save_record
    from reports.trial_data import FULL_RESULTS, PARAMETERS
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'n.db'}", study_name="new",
                                direction="maximize")
    save_record(study, {"spec": {"model": "resnet18", "epochs": 3, "data": "cifar10",
                                 "sampler": "random", "pruner": "none", "space": "wide"}})
    study.set_user_attr("target_trials", 4)
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    rng = random.Random(5)
    # Two trials side by side for 60 s, a pause of an hour (a resumed study), one for 30 s.
    for offset, seconds, size in ((0, 60, 11_000_000), (10, 50, 11_000_000), (3660, 30, 9)):
        trial = fake_trial("resnet18", rng, parameters=size)
        trial.user_attrs.pop("parameters")
        trial.system_attrs[PARAMETERS] = size
        trial.system_attrs[FULL_RESULTS] = {"max_val_acc": 0.123456789}
        trial.user_attrs["max_val_acc"] = 0.1235
        trial.datetime_start = start + datetime.timedelta(seconds=offset)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=seconds)
        study.add_trial(trial)
    assert study_system_attrs(study)[RECORD]["spec"]["model"] == "resnet18"
    lines = header_lines(study)
    assert lines[0] == "Model: ResNet18, from 9 to 11,000,000 parameters."
    assert lines[1] == "Search: 4 trials of 3 epochs, wide space, random sampler, no pruning."
    assert lines[2] == ("Data: CIFAR-10 (torchvision's copy), split sizes not recorded (a "
                        "study run before they were).")
    assert lines[3] == "Trials: 3 complete: 3 trials."
    # fake trials' epochs: 1.0 s training + 0.1 s validation each, 3 epochs a trial
    assert lines[4] == ("Time: 1 min 30 s of wall time with a trial running; 1.1 s per epoch "
                        "on average (training and validation, over 9 epochs).")
    table = top_table(study)
    assert list(table["max val acc"]) == [0.123456789] * 3     # reports read full precision


def test_report_table_states_constant_columns_once_and_aligns_words_left(tmp_path):
    from reports.page import table_html
    table = top_table(report_study(f"sqlite:///{tmp_path / 'r.db'}"), 8)
    assert len(table) == 8 and set(table["schedule"]) == {"constant"}
    box = table_html(table)
    heads = re.findall(r"<th class='(\w+)'>(.*?)</th>", box)
    assert ("text", "optimizer") in heads and ("number", "max val acc") in heads
    assert "schedule" not in [h for _, h in heads] and "epochs run" not in [h for _, h in heads]
    assert "In every row: schedule constant, epochs run 8." in box
    markdown = to_markdown(table).splitlines()               # the export keeps every column
    assert len(markdown) == 2 + 8 and "schedule" in markdown[0]
    rule = dict(zip([c.strip() for c in markdown[0].strip("|").split("|")],
                    markdown[1].strip("|").split("|")))
    assert rule["schedule"].startswith(":") and rule["optimizer"].startswith(":")  # left
    assert rule["max val acc"].endswith(":") and not rule["max val acc"].startswith(":")


def test_a_picture_page_has_a_heading_and_a_caption(tmp_path):
    from reports.page import write_pictures
    write_pictures({"first_layer_rgb_trial26": b"png"}, tmp_path)
    page = (tmp_path / "first_layer_rgb_trial26.html").read_text()
    assert "<h1>First layer of the best trial (RGB), #26</h1>" in page
    assert "<figcaption class='caption'>ResNet18 conv1: its 64 RGB kernels" in page


def test_cli_report_and_clear_errors(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study("mlpmixer", 10, storage=url, name="mixer")
    make_study("mlpmixer", 0, pruned=1, storage=url, name="empty")
    assert main(["report", "mixer", "--top", "8", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 8 and "embed dim" in lines[0]
    for argv, message in [(["report", "nope"], "no study 'nope'"),
                          (["report", "empty"], "no complete trial"),
                          (["plots", "nope", "-o", str(tmp_path / "f")], "no study 'nope'"),
                          (["report", "mixer", "--format", "html"], "needs -o FILE")]:
        assert main([*argv, "--storage", url]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("optuna-search: error:")
    missing = tmp_path / "missing.db"
    assert main(["report", "mixer", "--storage", f"sqlite:///{missing}"]) == 2
    assert not missing.exists() and not (tmp_path / "f").exists()   # nothing written


def test_cli_report_to_file_and_plots_folder(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study("resnet18", 4, storage=url, name="resnet18")
    assert main(["report", "resnet18", "--format", "csv", "-o", str(tmp_path / "t.csv"),
                 "--storage", url]) == 0
    assert (tmp_path / "t.csv").read_text().startswith("rank,trial,batch size")
    assert main(["plots", "resnet18", "-o", str(tmp_path / "figs"), "--storage", url]) == 0
    out = capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert "curves_val_acc.html" in written and "parallel_coordinate.html" in written
    assert ("curves_val_acc.png" in written) or "PNG copies of the plotly figures skipped" in out
    assert "first-layer pictures skipped" in out   # fake trials have no weights stored


def test_plots_folder_holds_one_plotly_js_and_opens_offline(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study_with_weights(tmp_path, url, "mlp", (512, 3 * 32 * 32), name="mlp")
    out = tmp_path / "figs"
    write_plots(url, "mlp", out)
    assert [p.name for p in out.rglob("*.js")] == ["plotly.min.js"]       # once per folder
    assert "plotly.js v" in (out / "plotly.min.js").read_text()[:300]
    pages = sorted(out.glob("*.html"))
    assert len(pages) == 8                       # 4 curves, 3 Optuna figures, 1 picture
    for page in pages:
        text = page.read_text()
        sources = re.findall(r"<(?:script|img)[^>]*\bsrc=[\"']([^\"']+)", text)
        assert sources and not any(re.match(r"(https?:)?//", s) for s in sources), page
        assert all((out / s).is_file() for s in sources), (page, sources)  # beside it
        assert page.stat().st_size < 300_000, page   # bytes: no embedded plotly.js, no PNG
    picture = out / "first_layer_rows_trial3.html"
    assert "src='first_layer_rows_trial3.png'" in picture.read_text()


def test_png_copies_are_valid_pngs_of_the_set_size_from_one_browser(tmp_path, monkeypatch):
    from reports.png import PNG_HEIGHT, PNG_WIDTH, missing_renderer, write_pngs
    reason = missing_renderer()
    if reason:
        skip_or_fail(f"no PNG export: {reason}")
    import plotly.io as pio
    figures = study_figures(thirty_trial_study())
    rendered = []
    real_write_images = pio.write_images

    def look_then_write(figs, *args, **kwargs):   # what kaleido is given, then it renders
        rendered.extend(f.to_json() for f in figs)
        return real_write_images(figs, *args, **kwargs)

    monkeypatch.setattr(pio, "write_images", look_then_write)
    paths = write_pngs(figures, tmp_path)
    assert len(rendered) == len(figures)
    assert not any("hover a line" in f or "(hover for" in f for f in rendered)
    assert [p.name for p in paths] == [f"{name}.png" for name in figures]
    for path in paths:
        with Image.open(path) as png:
            png.verify()                              # a whole, valid PNG
        with Image.open(path) as png:
            assert (png.format, png.size) == ("PNG", (PNG_WIDTH, PNG_HEIGHT)), path


def test_end_to_end_mlp_search_then_report_plots_and_dashboard(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["mlp", "--trials", "2", "--epochs", "1", "--data", "synthetic",
                 "--storage", url]) == 0
    assert main(["report", "mlp", "--storage", url]) == 0
    table = capsys.readouterr().out.splitlines()[-3:]   # header rule + 2 trial rows
    assert table[0].startswith("|--") and len(table) == 3
    assert main(["plots", "mlp", "-o", str(tmp_path / "figs"), "--storage", url]) == 0
    best = optuna.load_study(study_name="mlp", storage=url).best_trial
    png = tmp_path / "figs" / f"first_layer_rows_trial{best.number}.png"
    assert Image.open(png).size[0] >= 512              # read back from the artifact store
    study = optuna.load_study(study_name="mlp", storage=url)
    saved = saved_figure_ids(study)
    assert saved == ["01-curves_val_acc", "02-curves_train_acc", "03-curves_val_loss",
                     "04-curves_train_loss"]                     # registered by the search
    assert register_dashboard_figures(study) == saved             # fixed ids overwrite
    assert saved_figure_ids(study) == saved


def saved_figure_ids(study: optuna.Study) -> list[str]:
    """The ids of the non-empty figures saved for optuna-dashboard, sorted."""
    system = study_system_attrs(study)
    return sorted({k.split(":")[2] for k, v in system.items()
                   if k.startswith("dashboard:plot_data:") and v})


def test_dashboard_figures_in_reading_order_without_the_dashboards_own_panels(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(study_name="mixer", storage=url, direction="maximize")
    record_settings(study, "mlpmixer")
    rng = random.Random(2)
    for patch in (4, 8, 16):
        study.add_trial(fake_trial("mlpmixer", rng, patch_size=patch))
    from optuna_dashboard import save_plotly_graph_object
    for old in ("optimization_history", "param_importances", "curves_val_acc"):  # older ids
        save_plotly_graph_object(study, learning_curves(study)["curves_val_acc"],
                                 graph_object_id=old)
    ids = register_dashboard_figures(study)
    assert ids == ["01-curves_val_acc", "02-curves_train_acc", "03-curves_val_loss",
                   "04-curves_train_loss", "05-patch_parameters", "06-patch_train_seconds",
                   "07-patch_val_seconds"]
    assert saved_figure_ids(study) == ids == sorted(ids)   # the older ones are emptied


def test_reproduction_page_renders_its_markdown_with_tables_as_tables():
    from reports.reproduction import _markdown, _page
    table = _markdown(pd.DataFrame({"lr": [0.001, 0.01], "max val acc": [0.5, 0.25]}))
    md = ["# optuna-search: the report reproduced", "", "Study `mlp<1>` & <b>x</b>.", "",
          table, ""]
    figure = learning_curves(make_study("mlp", 2))["curves_val_acc"]
    page = _page(md, {"fig04_curves_val_acc": figure}, {}, {})
    assert "<pre" not in page and "<h1>optuna-search: the report reproduced</h1>" in page
    assert "<table>" in page and page.count("<tr>") == 3 and "<td" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<code>mlp&lt;1&gt;</code>" in page  # text
    assert page.count("plotly.js v") == 1 and not re.search(r"<script[^>]*\bsrc=", page)


# ---- reading without torch -------------------------------------------------------------

NO_TORCH = "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    # no Chromium: PNG copies are skipped with a note, so these runs take seconds
    env = {**os.environ, "BROWSER_PATH": str(tmp_path / "no-browser")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_reading_library_calls_never_import_torch(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study_with_weights(tmp_path, url, "mlp", (512, 3 * 32 * 32), name="mlp")
    code = f"""import sys
from reports.page import render_report, write_plots
from reports.studies import list_studies
from reports.dashboard_figures import register_dashboard_figures
from search.dashboard import dashboard_app
from search.errors import DataError, StudyMismatch
import optuna
assert list(list_studies({url!r})["study"]) == ["mlp"]
assert "<table" in render_report({url!r}, "mlp", fmt="html")
written = write_plots({url!r}, "mlp", {str(tmp_path / "figs")!r})
assert any(p.name == "first_layer_rows_trial3.png" for p in written.paths), written
register_dashboard_figures(optuna.load_study(study_name="mlp", storage={url!r}))
dashboard_app({url!r})
{NO_TORCH}
"""
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def test_list_studies_counts_trials_per_state(tmp_path):
    from reports.studies import list_studies
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study("mlp", 3, pruned=2, storage=url, name="a")
    make_study("resnet18", 1, storage=url, name="b")
    table = list_studies(url)
    assert list(table["study"]) == ["a", "b"] and list(table["model"]) == ["mlp", "resnet18"]
    assert list(table["complete"]) == [3, 1] and list(table["pruned"]) == [2, 0]
    best = max(t.value for t in optuna.load_study(study_name="a", storage=url).trials
               if t.value is not None)
    assert table["best_val_acc"][0] == round(best, 4)
    assert list(table["trials"]) == [5, 1] and table["best_trial"][1] == 0


@pytest.mark.parametrize("command", ["studies", "report", "plots", "dashboard"])
def test_reading_commands_start_without_torch(tmp_path, command):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study("mlp", 2, storage=url, name="mlp")
    argv = {"studies": ["studies"], "report": ["report", "mlp"],
            "plots": ["plots", "mlp", "-o", str(tmp_path / "figs")],
            "dashboard": ["dashboard", "--port", "0"]}[command]
    code = f"""import runpy, sys
import search.dashboard
def ctrl_c(self):  # the dashboard serves until Ctrl-C: press it at once
    raise KeyboardInterrupt
search.dashboard.DashboardServer.serve_forever = ctrl_c
sys.argv = ["optuna-search", *{argv!r}, "--storage", {url!r}]
try:
    runpy.run_module("search.cli", run_name="__main__")
except SystemExit as end:
    assert end.code == 0, end.code
{NO_TORCH}
"""
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


# ---- the table on a terminal -------------------------------------------------------------

def realistic_study(model: str, storage: str, name: str) -> optuna.Study:
    """30 trials of the report's space (20 complete, 10 pruned), the Mixer's embed dims
    spread over 64-300: the values as wide as the space has them."""
    study = make_study(model, 0, storage=storage, name=name)
    rng = random.Random(model)
    for i in range(30):
        state = TrialState.COMPLETE if i < 20 else TrialState.PRUNED
        trial = fake_trial(model, rng, state, epochs=3 if i < 20 else 1,
                           embed_dim=rng.randint(64, 300))
        if "embed_dim" in trial.params:   # an integer range, as the space searches it
            trial.distributions = {**trial.distributions,
                                   "embed_dim": IntDistribution(64, 300)}
        study.add_trial(trial)
    return study


@pytest.mark.parametrize("model", ["resnet18", "mlpmixer"])
def test_on_a_terminal_the_top_8_fit_100_columns_with_short_headers_and_a_key(model,
                                                                             tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = realistic_study(model, url, model)
    text = render_report(url, model, top=8, fmt="text", width=100).splitlines()
    assert max(len(line) for line in text) <= 100, "\n".join(text)
    assert text[0] == f"Study {model!r}, {model}: 20 complete, 10 pruned: 30 trials."
    rows = table_rows("\n".join(text))
    assert len(rows) == 8
    headers = list(rows[0])
    assert headers[:2] == ["#", "trial"] and headers[-3:] == ["train", "val", "test"]
    assert {"lr", "opt", "wd"} <= set(headers)
    # said once above the table, not in every row: the schedule, the epochs, the patch size
    said = next(line for line in text if line.startswith("In every row: "))
    assert "schedule constant" in said and "epochs run 3" in said
    assert "sched" not in headers and "ep" not in headers and "patch" not in headers
    best = top_table(study, 8)
    assert [row["val"] for row in rows] == [f"{v:.4f}" for v in best["max val acc"]]
    key = " ".join(text[text.index(next(line for line in text if line.startswith("Key:"))):])
    assert "wd weight decay" in key and "val: the best accuracy of any epoch" in key
    # Markdown keeps every column under its full name, for pasting
    markdown = render_report(url, model, top=8, fmt="markdown").splitlines()
    assert "schedule" in markdown[0] and "max val acc" in markdown[0] and len(markdown) == 10


def test_report_on_a_terminal_is_the_terminal_table_and_a_file_gets_markdown(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    realistic_study("mlpmixer", url, "mixer")
    code, seen = run_in_terminal([sys.executable, "-m", "search.cli", "report", "mixer",
                                  "--storage", url], tmp_path, columns=100)
    text = seen.replace("\r\n", "\n")
    assert code == 0 and "In every row: " in text and "|" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 100
    code, seen = run_in_terminal([sys.executable, "-m", "search.cli", "report", "mixer",
                                  "-o", "top.md", "--storage", url], tmp_path, columns=100)
    assert code == 0 and (tmp_path / "top.md").read_text().startswith("|   rank |")


def test_studies_says_dash_for_a_study_without_a_complete_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    make_study("mlp", 2, pruned=1, storage=url, name="a")
    make_study("mlp", 0, pruned=2, storage=url, name="none-complete")
    code, seen = run_in_terminal([sys.executable, "-m", "search.cli", "studies",
                                  "--storage", url], tmp_path, columns=80)
    rows = {row["study"]: row for row in table_rows(seen.replace("\r\n", "\n"))}
    assert code == 0 and "nan" not in seen
    assert rows["none-complete"]["best val"] == "-" and rows["none-complete"]["of trial"] == "-"
    assert (rows["a"]["complete"], rows["a"]["pruned"], rows["a"]["trials"]) == ("2", "1", "3")
