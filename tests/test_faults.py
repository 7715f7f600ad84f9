"""Faults: a killed worker loses nothing, interrupts end trials cleanly, a bad trial never stops
the study, and bad input (workers, worker, storage files) is refused before anything is written.

Trials are short: the MLP with 16 hidden units on 100 synthetic images, a few epochs.
"""
from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.objective
import search.trainer
from search.cli import main

TINY = ["--data", "synthetic", "--train-subset", "100", "--test-subset", "100",
        "--val-size", "50", "--set", "hidden_sizes=16", "--sampler", "random",
        "--pruner", "none"]
REPO = Path(__file__).resolve().parents[1]


def load(db: Path, study: str = "mlp") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}")


def states(db: Path, study: str = "mlp") -> list[str]:
    return [t.state.name for t in load(db, study).get_trials()]


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def run_cli(argv: list[str], code: str = "", **env) -> subprocess.Popen:
    """optuna-search in a subprocess of its own session, after `code` (a monkeypatch)."""
    script = f"import sys\n{code}\nfrom search.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", script, *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)


def wait_for_running(db: Path, count: int, seconds: float = 60) -> None:
    """Until `count` trials are RUNNING and each has reported an epoch."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as connection:
                    running = connection.execute(
                        "SELECT COUNT(DISTINCT t.trial_id) FROM trials t JOIN "
                        "trial_intermediate_values v ON v.trial_id = t.trial_id "
                        "WHERE t.state = 'RUNNING'").fetchone()[0]
                if running >= count:
                    return
            except sqlite3.OperationalError:  # tables not made yet
                pass
        time.sleep(0.1)
    raise AssertionError(f"{count} trials never ran at once")


# ------------------------------------------------------------------ 3. a killed worker

# Kill this process outright (no cleanup at all) after the first step of epoch 2.
KILL_IN_EPOCH_2 = """
import os, signal
import search.trainer as trainer
train_epoch = trainer._train_epoch
def dying(model, loader, optimizer, cuda, epoch):
    def batches():
        for step, batch in enumerate(loader):
            if epoch == 2 and step == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch
    return train_epoch(model, batches(), optimizer, cuda, epoch)
trainer._train_epoch = dying
"""


def test_a_killed_worker_loses_nothing_the_retry_resumes_after_the_last_epoch(
        tmp_path, monkeypatch, capsys):
    db, heartbeat = tmp_path / "kill.db", {"OPTUNA_SEARCH_HEARTBEAT": "1",
                                            "OPTUNA_SEARCH_GRACE": "2"}
    url = f"sqlite:///{db}"
    worker = run_cli(["mlp", "--trials", "1", "--epochs", "3", "--storage", url, *TINY,
                      "--set", "batch_size=32"], KILL_IN_EPOCH_2, **heartbeat)
    assert worker.wait(timeout=120) == -signal.SIGKILL, worker.stderr.read()
    killed = load(db).get_trials()[0]
    assert killed.state == TrialState.RUNNING and list(killed.intermediate_values) == [1]
    checkpoint = tmp_path / "kill.db-artifacts" / "checkpoints" / "mlp-trial0.pt"
    assert checkpoint.exists()

    # Another worker, after the grace period: its first trial marks the stale one FAIL,
    # queues a retry, and runs that retry (popped from the queue) from the checkpoint.
    time.sleep(2.5)
    for name, value in heartbeat.items():
        monkeypatch.setenv(name, value)
    trained = []
    train_epoch = search.trainer._train_epoch

    def recording(model, loader, optimizer, cuda, epoch):
        trained.append(epoch)
        return train_epoch(model, loader, optimizer, cuda, epoch)

    monkeypatch.setattr(search.trainer, "_train_epoch", recording)
    assert main(["worker", "mlp", "--storage", url, "--trials", "1"]) == 0
    failed, retry = load(db).get_trials()
    assert failed.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    assert trained == [2, 3]                                   # only the missing epochs
    assert list(retry.intermediate_values) == [1, 2, 3]        # no gap, no duplicate
    assert retry.intermediate_values[1] == killed.intermediate_values[1]
    assert len(retry.user_attrs["curves"]["val_acc"]) == 3 and retry.user_attrs["epochs_run"] == 3
    assert not checkpoint.exists()                              # removed when the trial ended
    assert integrity(db) == "ok"


# ------------------------------------------------------------------ 4. interrupts, bad trials

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_running_trial_cleanly(tmp_path, signum):
    db = tmp_path / "signal.db"
    worker = run_cli(["mlp", "--trials", "3", "--epochs", "2000", "--storage",
                      f"sqlite:///{db}", *TINY])
    wait_for_running(db, 1)
    worker.send_signal(signum)
    assert worker.wait(timeout=60) == 130
    err = worker.stderr.read()
    assert "interrupted" in err and "Traceback" not in err
    assert states(db) == ["FAIL"]
    assert integrity(db) == "ok"


@pytest.mark.parametrize("to_group", [False, True], ids=["SIGTERM-to-parent", "Ctrl-C"])
def test_the_parent_forwards_a_signal_to_its_workers_and_waits(tmp_path, to_group):
    db = tmp_path / "workers.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "6", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY])
    wait_for_running(db, 2)
    if to_group:  # a terminal's Ctrl-C reaches the parent and every worker at once
        os.killpg(parent.pid, signal.SIGINT)
    else:
        parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 130
    err = parent.stderr.read()
    assert "interrupted" in err and "Traceback" not in err
    assert states(db) == ["FAIL", "FAIL"]
    assert integrity(db) == "ok"


def test_out_of_memory_fails_one_trial_frees_its_model_and_the_next_runs(
        tmp_path, monkeypatch, capsys):
    models, freed_at_cleanup = [], []
    build, cleanup = search.objective.build, search.objective.Objective._cleanup

    def tracking_build(name, config):
        model = build(name, config)
        models.append(weakref.ref(model))
        return model

    def tracking_cleanup(checkpoint):
        cleanup(checkpoint)  # gc.collect(), then torch.cuda.empty_cache() on a GPU
        freed_at_cleanup.append(models[-1]() is None)

    train_epoch = search.trainer._train_epoch

    def out_of_memory_once(model, loader, optimizer, cuda, epoch):
        if len(models) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train_epoch(model, loader, optimizer, cuda, epoch)

    monkeypatch.setattr(search.objective, "build", tracking_build)
    monkeypatch.setattr(search.objective.Objective, "_cleanup", staticmethod(tracking_cleanup))
    monkeypatch.setattr(search.trainer, "_train_epoch", out_of_memory_once)
    db = tmp_path / "oom.db"
    assert main(["mlp", "--trials", "3", "--epochs", "1", "--storage", f"sqlite:///{db}",
                 *TINY]) == 0
    trials = load(db).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of")
    assert "OutOfMemoryError" in capsys.readouterr().out  # its line says why
    # The failed trial's model (weights, gradients, optimizer state) is gone before the
    # cache is emptied, so its GPU memory really goes back before the next trial.
    assert freed_at_cleanup[0] is True
