"""bench/search_efficiency.py on tiny synthetic data: the policies run as one study per (policy,
seed) in one storage, T is computed, the table and the anytime figure are written; killed for
real in the middle of a trial, a rerun goes on where it stopped and trains nothing twice, and
a third run trains nothing at all. Also its summary's arithmetic on canned numbers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import FAST_HEARTBEAT, REPO, finished, running_with_an_epoch, wait_until

sys.path.insert(0, str(REPO / "bench"))
from efficiency_summary import Seed, quantiles, table  # noqa: E402
from search_efficiency import parse_seeds  # noqa: E402

from reports.budget import Point, trained_twice  # noqa: E402

POLICIES = "random,tpe10-median-s2-w1"
ARGS = ["--data", "synthetic", "--train-subset", "100", "--val-size", "50", "--test-subset",
        "100", "--set", "hidden_sizes=16", "--epochs", "3", "--trials", "3", "--seeds", "0-1",
        "--policies", POLICIES, "--storage", "sqlite:///bench.db", "--out", "summary"]
STUDIES = [f"cpu-{p}-seed{s}" for s in (0, 1) for p in POLICIES.split(",")]


def bench(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "bench" / "search_efficiency.py"),
                             *ARGS], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **FAST_HEARTBEAT})


def trials_of(folder: Path) -> dict[str, list[tuple]]:
    """Each study's trials as (number, state, params, value)."""
    url = f"sqlite:///{folder / 'bench.db'}"
    return {name: [(t.number, t.state.name, t.params, t.value) for t in
                   optuna.load_study(study_name=name, storage=url).get_trials()]
            for name in optuna.get_all_study_names(storage=url)}


@pytest.mark.slow
def test_killed_mid_trial_a_rerun_goes_on_and_trains_nothing_twice(tmp_path):
    first = bench(tmp_path)
    # Once the first study is done and a trial of a later one is training: SIGKILL.
    db = tmp_path / "bench.db"
    wait_until(lambda: finished(db) >= 4 and running_with_an_epoch(db) >= 1, 240,
               "a study done and a later trial training")
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    before = trials_of(tmp_path)
    killed = [name for name, trials in before.items()
              if any(state == "RUNNING" for _, state, _, _ in trials)]
    assert len(killed) == 1 and killed[0] != "cpu-random-seed0"

    second = bench(tmp_path)
    out, err = second.communicate(timeout=400)
    assert second.returncode == 0, err
    after = trials_of(tmp_path)
    assert sorted(after) == sorted(STUDIES)
    for name, trials in before.items():   # studies done before the kill: untouched
        if name not in killed and len(trials) >= 3:
            assert after[name] == trials, name
    url = f"sqlite:///{db}"
    for name in STUDIES:
        study = optuna.load_study(study_name=name, storage=url)
        states = [t.state for t in study.trials]
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states
        assert trained_twice(study.trials) == 0, name
        trained = [t for t in study.trials if t.state != TrialState.FAIL
                   and "repeat_of" not in t.user_attrs]
        assert len(trained) == 3, name
    retried = optuna.load_study(study_name=killed[0], storage=url).trials
    failed = [t for t in retried if t.state == TrialState.FAIL]
    retry = [t for t in retried if t.system_attrs.get("retry_history") == [failed[0].number]]
    assert len(failed) == 1 and retry[0].params == failed[0].params   # went on, not anew
    assert retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    # Paired seeds: TPE's random start-up trials are random search's (seed 1, one run each).
    pairs = [[t.params for t in after_study][:3] for after_study in (
        optuna.load_study(study_name=f"cpu-{p}-seed1", storage=url).trials
        for p in POLICIES.split(","))]
    assert pairs[0] == pairs[1]

    text = (tmp_path / "summary" / "table.md").read_text()
    assert text.startswith("T = 0.") and "| random | 2 |" in text
    assert "| tpe10-median-s2-w1 | 2 |" in text and "Not finished" not in text
    for name in ("anytime_epochs.html", "anytime_seconds.html", "plotly.min.js"):
        assert (tmp_path / "summary" / name).is_file()
    assert (tmp_path / "summary" / "anytime_epochs.png").is_file() or "PNG copies" in out

    third = bench(tmp_path)                     # everything done: trains nothing
    out, err = third.communicate(timeout=200)
    assert third.returncode == 0, err
    assert trials_of(tmp_path) == after and "== cpu-" not in out and "T = " in out


def test_a_study_of_another_budget_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "search_efficiency.py"),
                           *ARGS[:-6], "--seeds", "0", "--policies", "random", "--storage",
                           "sqlite:///bench.db", "--trials", "1", "--epochs", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([sys.executable, str(REPO / "bench" / "search_efficiency.py"),
                            *ARGS[:-6], "--seeds", "0", "--policies", "random", "--storage",
                            "sqlite:///bench.db", "--trials", "1", "--epochs", "2"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "epochs 2 (asked) vs 1 (study)" in again.stderr


def test_seeds_are_ranges_or_lists():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0,3,3") == [0, 3]
    with pytest.raises(ValueError):
        parse_seeds("0-x")


def seed(policy, number, best, epochs, reach_at, test=None):
    points = [Point(0, reach_at, 1.0, best)] if reach_at else [Point(0, epochs, 1.0, 0.1)]
    return Seed(policy, number, best, test if test is not None else best - 0.01, epochs,
                10.0, 0, 0, 0.5, [*points, Point(1, epochs, 2.0, best)])


def test_the_table_takes_the_median_seed_counting_one_that_never_reaches_t_as_slowest():
    found = {"random": [seed("random", s, b, 300, None) for s, b in
                        enumerate((0.33, 0.40, 0.41))],
             "fast": [seed("fast", 0, 0.45, 100, 60), seed("fast", 1, 0.44, 90, 80),
                      seed("fast", 2, 0.30, 120, None)]}
    rows = table(found, 0.40, {"fast"}).splitlines()
    fast = next(r for r in rows if r.startswith("| **fast** (default)"))
    cells = [c.strip() for c in fast.split("|")[1:-1]]
    assert cells[1] == "3" and cells[2] == "0.440 (0.300 to 0.450)"
    assert cells[6] == "80 (60 to 80)"              # the median of 60, 80 and never
    assert cells[7] == "0.27 (latest 0.27)"         # of random's 300 epochs
    assert cells[8] == "2 of 3"
    assert quantiles([None, 0.2, 0.3], (50,)) == [0.2] and quantiles([0.1, 0.3], (50,)) == [0.2]
