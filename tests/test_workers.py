"""--workers N and `optuna-search worker`: worker processes sharing one study on SQLite.

The load test runs the real command (spawned workers, the default SQLite storage, the real
objective) with trials made short: the MLP with one hidden layer of 16 units, 1 epoch on
100 synthetic images.
"""
from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search import workers
from search.cli import main

SHORT_TRIALS = ["--data", "synthetic", "--epochs", "1", "--train-subset", "100",
                "--test-subset", "100", "--val-size", "50", "--set", "hidden_sizes=16",
                "--sampler", "random", "--pruner", "none"]
TRIAL_LINE = re.compile(r"^\[w(\d+)\] trial +(\d+) (\w+)", re.MULTILINE)


def trials_of(db, study: str = "mlp"):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials()


@pytest.mark.slow
def test_eight_workers_run_200_trials_on_sqlite_without_losing_or_repeating_one(tmp_path, capfd):
    db = tmp_path / "load.db"
    started = time.perf_counter()
    code = main(["mlp", "--workers", "8", "--trials", "200", "--storage", f"sqlite:///{db}",
                 *SHORT_TRIALS])
    seconds = time.perf_counter() - started
    out, err = capfd.readouterr()
    assert code == 0, err
    trials = trials_of(db)
    assert len(trials) == 200
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 200}
    assert sorted(t.number for t in trials) == list(range(200))
    assert all(t.user_attrs["epochs_run"] == 1 and "test_acc" in t.user_attrs for t in trials)
    # One line per finished trial, prefixed by its worker; every worker took part.
    lines = TRIAL_LINE.findall(out)
    assert sorted(int(number) for _, number, _ in lines) == list(range(200))
    assert {worker for worker, _, _ in lines} == {str(i) for i in range(8)}
    assert "locked" not in out + err and "Traceback" not in err
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    print(f"8 workers x 200 trials: {seconds:.1f} s")


def test_workers_run_each_grid_point_once_and_a_second_run_nothing(tmp_path, capfd):
    db = tmp_path / "grid.db"
    grid = ["--grid", "activation=relu,sigmoid,tanh", "--grid", "batch_size=64,128"]
    command = ["mlp", "--workers", "3", "--storage", f"sqlite:///{db}", "--study", "grid",
               *SHORT_TRIALS, *grid]
    assert main(command) == 0
    trials = trials_of(db, "grid")
    points = Counter((t.params["activation"], t.params["batch_size"]) for t in trials)
    assert len(points) == 6 and set(points.values()) == {1}
    assert all(t.state == TrialState.COMPLETE for t in trials)
    capfd.readouterr()
    assert main(command) == 0
    assert "every grid point is already done" in capfd.readouterr().out
    assert len(trials_of(db, "grid")) == 6


def test_worker_joins_a_study_with_the_settings_it_was_made_with(tmp_path, capsys):
    db = tmp_path / "join.db"
    url = f"sqlite:///{db}"
    assert main(["mlp", "--trials", "1", "--storage", url, *SHORT_TRIALS,
                 "--set", "activation=tanh"]) == 0
    capsys.readouterr()
    # No model, space, --set or data options given: the study's are used.
    assert main(["worker", "mlp", "--storage", url, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    trials = trials_of(db)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials[1:]:
        config = trial.user_attrs["config"]
        assert config["activation"] == "tanh" and config["hidden_sizes"] == [16]
        assert trial.user_attrs["epochs_run"] == 1
    assert "100 train / 50 val / 100 test" in out
    assert len(re.findall(r"^trial +\d+ COMPLETE", out, re.MULTILINE)) == 2


def test_gpus_are_handed_out_round_robin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert workers.gpu_assignment(5) == ["0", "1", "0", "1", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5")  # only these are ours to use
    assert workers.gpu_assignment(4) == ["2", "3", "5", "2"]
    assert workers.gpu_assignment(2, device="cpu") == [None, None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert workers.gpu_assignment(2) == [None, None]
