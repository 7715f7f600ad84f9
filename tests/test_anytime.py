"""reports/anytime.py: the anytime figure's data (best so far against epochs and seconds spent,
each trained trial a dot where it ended), and that `plots`, the HTML page and the dashboard's
figures include it."""
from __future__ import annotations

import optuna

from reports.anytime import anytime_figures
from reports.captions import figure_text
from reports.dashboard_figures import dashboard_figures
from reports.figures import study_figures

from test_budget import a_study


def traces(figure) -> dict:
    return {trace.name: trace for trace in figure.data}


def test_the_line_is_the_best_so_far_at_the_epochs_spent_and_each_trial_a_dot():
    figures = anytime_figures(a_study())
    assert list(figures) == ["anytime_epochs", "anytime_seconds"]
    by_epochs = traces(figures["anytime_epochs"])
    line = by_epochs["best so far"]
    assert list(line.x) == [0, 10, 13, 13, 17, 23, 24]          # epochs when each ended
    assert list(line.y) == [None, 0.40, 0.40, 0.40, 0.40, 0.55, 0.55]
    assert line.line.shape == "hv"                              # steps, not slopes
    complete = by_epochs["a complete trial"]                    # the repeat (2) has no dot
    assert (list(complete.x), list(complete.y), list(complete.customdata)) == (
        [10, 23], [0.40, 0.55], [0, 4])
    pruned = by_epochs["a pruned trial"]                        # its best up to its prune
    assert (list(pruned.x), list(pruned.customdata)) == ([13, 24], [1, 5])
    assert list(pruned.y) == [0.13, 0.11] and pruned.marker.symbol == "circle-open"
    failed = by_epochs["a failed try"]
    assert (list(failed.x), list(failed.y)) == ([17], [0.14])
    seconds = traces(figures["anytime_seconds"])["best so far"]
    assert list(seconds.x) == [0, 10, 20, 20.5, 30.5, 90.5, 100.5]
    assert figures["anytime_seconds"].layout.xaxis.title.text.startswith("trial seconds")


def test_no_figure_before_a_trial_has_ended():
    study = optuna.create_study()
    study.ask()   # running
    assert anytime_figures(study) == {}


def test_plots_the_page_and_the_dashboard_include_it_with_a_caption():
    study = a_study()
    assert {"anytime_epochs", "anytime_seconds"} <= set(study_figures(study))
    assert [name for name in dashboard_figures(study) if "anytime" in name] == [
        "05-anytime_epochs", "06-anytime_seconds"]
    heading, caption = figure_text("anytime_epochs")
    assert heading == "Best so far against epochs spent" and "pruned ones included" in caption
