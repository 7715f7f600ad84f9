"""Nothing a fault can do makes a study lie (issue 12), each fault caused for real: an old
study's checkpoint, another budget, simultaneous first runs, an unreadable checkpoint, a full
or read-only disk, data of other than 10 classes, a broken GPU, a model left alive.
`PRAGMA integrity_check` after every fault.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import weakref
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.objective
import search.train.trainer
from helpers import (FAST_HEARTBEAT, TINY, finished, integrity, load, run_cli,
                     running_with_an_epoch, wait_until)
from reports.trial_data import trial_config, trial_value
from search.cli import main
from search.train.data import make_dataset
from search.objective import Objective, Runtime
from search.settings import StudySpec
from storage import open_store


def trained_epochs(monkeypatch) -> list[int]:
    """Record the epochs train() really trains in this process."""
    trained = []
    train_epoch = search.train.trainer._train_epoch

    def recording(*args, **kwargs):
        trained.append(args[4] if len(args) > 4 else kwargs["epoch"])
        return train_epoch(*args, **kwargs)
    monkeypatch.setattr(search.train.trainer, "_train_epoch", recording)
    return trained


def kill_mid_trial(command: list[str], db: Path, **env) -> optuna.trial.FrozenTrial:
    """Run `command`, SIGKILL it once a trial has reported an epoch; return that trial."""
    victim = run_cli(command, **env)
    wait_until(lambda: running_with_an_epoch(db) >= 1, what="a trial that reported an epoch")
    victim.kill()
    assert victim.wait(timeout=60) == -signal.SIGKILL
    return next(t for t in load(db).get_trials() if t.state == TrialState.RUNNING)


def checkpoints(folder: Path) -> list[Path]:
    return sorted((folder / "checkpoints").glob("*.pt*")) if folder.exists() else []


# 1 -------------------------------------------------------------------------------------------
def test_a_new_study_in_a_new_file_never_trains_from_an_old_studys_checkpoint(tmp_path,
                                                                               monkeypatch):
    db, artifacts = tmp_path / "s.db", tmp_path / "s.db-artifacts"
    old = ["mlp", "--trials", "1", "--epochs", "40", "--storage", f"sqlite:///{db}", *TINY,
           "--set", "lr=0.075", "--set", "optimizer=sgd", "--set", "batch_size=16",
           "--checkpoint-every", "0"]
    kill_mid_trial(old, db)
    assert checkpoints(artifacts)            # the killed trial's state is on disk
    for path in tmp_path.glob("s.db*"):      # "start fresh": the study file goes, not its folder
        if path.is_file():
            path.unlink()
    trained = trained_epochs(monkeypatch)
    assert main(["mlp", "--trials", "1", "--epochs", "3", "--storage", f"sqlite:///{db}",
                 *TINY, "--set", "lr=0.0001", "--set", "optimizer=sgd",
                 "--set", "batch_size=16", "--checkpoint-every", "0"]) == 0
    (trial,) = load(db).get_trials()
    assert trained == [1, 2, 3]              # from the start, never from the old state
    assert trial_config(trial)["lr"] == 0.0001
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert integrity(db) == "ok"


# 2 -------------------------------------------------------------------------------------------
def test_a_study_is_never_resumed_under_another_budget(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    small = ["mlp", "--grid", "activation=relu,tanh", "--storage", url, "--data", "synthetic",
             "--set", "hidden_sizes=16"]
    assert main([*small, "--epochs", "1", "--train-subset", "100"]) == 0
    before = [(t.number, t.state, trial_value(t, "epochs_run"))
              for t in load(tmp_path / "s.db", "mlp-hidden_sizes=16-grid-activation").trials]
    capsys.readouterr()
    assert main([*small, "--epochs", "3"]) == 2          # all the data, three epochs
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "epochs 3 (asked) vs 1 (study)" in lines[0]
    assert "train_subset none (asked) vs 100 (study)" in lines[0]
    assert "--study NEW-NAME" in lines[0]
    after = load(tmp_path / "s.db", "mlp-hidden_sizes=16-grid-activation").trials
    assert [(t.number, t.state, trial_value(t, "epochs_run")) for t in after] == before
    assert integrity(tmp_path / "s.db") == "ok"


def image_folder(root: Path, classes: int, per_class: int = 3, colour: int = 0) -> Path:
    from PIL import Image
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "test" else per_class * 4):
                Image.new("RGB", (32, 32), ((c * 25 + colour) % 256, i * 9, 80)).save(
                    folder / f"{i}.png")
    return root


def test_other_data_under_the_same_options_is_another_budget_too(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("OPTUNA_SEARCH_CACHE", str(tmp_path / "cache"))
    first = image_folder(tmp_path / "first", 10)
    second = image_folder(tmp_path / "second", 10, colour=128)   # same layout, other images
    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["mlp", "--trials", "1", "--epochs", "1", "--storage", url, "--val-size", "10",
            "--set", "hidden_sizes=16"]
    assert main([*argv, "--data", str(first)]) == 0
    copy = tmp_path / "copy-of-first"                             # the same images elsewhere
    subprocess.run(["cp", "-r", str(first), str(copy)], check=True)
    assert main([*argv, "--data", str(copy), "--trials", "2"]) == 0
    capsys.readouterr()
    assert main([*argv, "--data", str(second), "--trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "data_content" in err and len(err.strip().splitlines()) == 1
    assert len(load(tmp_path / "s.db").trials) == 2


# 4 -------------------------------------------------------------------------------------------
def test_three_first_runs_at_once_on_a_new_file_share_one_study(tmp_path):
    db = tmp_path / "new.db"
    command = ["mlp", "--trials", "6", "--epochs", "2", "--storage", f"sqlite:///{db}", *TINY]
    runs = [run_cli(command) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
    assert finished(db) == 6 and len(load(db).get_trials()) == 6
    assert integrity(db) == "ok"


# 5 -------------------------------------------------------------------------------------------
def test_an_unreadable_checkpoint_is_discarded_and_the_retry_starts_at_epoch_1(
        tmp_path, monkeypatch, caplog):
    db, artifacts = tmp_path / "s.db", tmp_path / "s.db-artifacts"
    command = ["mlp", "--trials", "1", "--epochs", "40", "--storage", f"sqlite:///{db}", *TINY,
               "--set", "batch_size=16", "--checkpoint-every", "0"]
    killed = kill_mid_trial(command, db, **FAST_HEARTBEAT)
    (saved,) = [p for p in checkpoints(artifacts) if p.suffix == ".pt"]
    saved.write_bytes(saved.read_bytes()[:100])                  # truncated
    for name, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    trained = trained_epochs(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert main([*command[:4], "3", *command[5:]]) == 2  # another budget: refused
        assert main(command) == 0
    retry = next(t for t in load(db).get_trials() if t.system_attrs.get("failed_trial")
                 == killed.number)
    assert retry.state == TrialState.COMPLETE and trained[0] == 1  # started over, not lost
    assert sorted(retry.intermediate_values) == list(range(1, 41))
    assert any("checkpoint" in r.getMessage() for r in caplog.records)
    assert checkpoints(artifacts) == []                          # nothing left behind
    assert integrity(db) == "ok"


# 6 -------------------------------------------------------------------------------------------
def test_a_full_artifact_disk_is_one_line_exit_1_and_the_trial_fails_with_its_reason(
        tmp_path, tiny_disk, monkeypatch, capsys):
    monkeypatch.setenv("OPTUNA_SEARCH_ARTIFACTS", str(tiny_disk))
    db = tmp_path / "s.db"
    # The disk fills while the search runs: check_writable (which asks for 1 MiB free before
    # the first trial) is told to be content with less, then the disk is filled.
    monkeypatch.setattr("storage.faults.MIN_FREE_BYTES", 1)
    descriptor = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)
    size = (tiny_disk / "filler").stat().st_size   # 16 KiB left: less than a trial's pictures
    os.truncate(tiny_disk / "filler", size - 16384)
    code = main(["mlp", "--trials", "3", "--epochs", "1", "--storage", f"sqlite:///{db}",
                 *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No space left" in err[0], err
    trials = load(db).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL]       # one trial, then it stopped
    assert "No space left" in trial_value(trials[0], "fail_reason")
    assert integrity(db) == "ok"


@pytest.mark.parametrize("command", [["mlp", "--trials", "1", "--epochs", "1", *TINY],
                                     ["reproduce", "--data", "synthetic", "--epochs", "1"]])
def test_a_read_only_storage_folder_is_bad_input_before_anything_runs(tmp_path, tiny_disk,
                                                                      command, capsys):
    assert subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)]).returncode == 0
    code = main([*command, "--storage", f"sqlite:///{tiny_disk / 's.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "read-only" in err[0], err
    assert list(tiny_disk.iterdir()) == []


# 10 ------------------------------------------------------------------------------------------
def test_data_with_other_than_10_classes_is_one_line_and_writes_nothing(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("OPTUNA_SEARCH_CACHE", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "three", 3)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["mlp", "--data", str(data), "--storage", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 3 classes" in err[0] and "10" in err[0]
    assert not (tmp_path / "s.db").exists()


def test_a_cuda_error_fails_its_trial_and_stops_the_process_not_every_trial(
        tmp_path, monkeypatch, capsys):
    def device_assert(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")
    monkeypatch.setattr(search.objective, "train", device_assert)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["mlp", "--trials", "3", "--epochs", "1", "--storage", url, *TINY]) == 1
    err = capsys.readouterr().err
    assert "device failed" in err and "device-side assert" in err
    trials = load(tmp_path / "s.db").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # queued again
    monkeypatch.undo()
    assert main(["mlp", "--trials", "3", "--epochs", "1", "--storage", url, *TINY]) == 0
    assert finished(tmp_path / "s.db") == 3 and integrity(tmp_path / "s.db") == "ok"


@pytest.mark.parametrize("stuck", [False, True])
def test_out_of_memory_fails_that_trial_and_stops_the_process_only_if_memory_stays_stuck(
        tmp_path, monkeypatch, capsys, stuck):
    """Out of memory is the trial's own fault: FAIL, not queued again. Where memory stayed
    reserved after it (seen on an H200: a failed capture's pool), every later trial of this
    process would run out too, so the process stops with one line; else the study goes on."""
    def too_big(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 MiB.")
    monkeypatch.setattr(search.objective, "train", too_big)
    monkeypatch.setattr(search.objective, "stuck_memory",
                        lambda device: "2.4 GiB of this process's 2.6 GiB" if stuck else None)
    url = f"sqlite:///{tmp_path / 's.db'}"
    code = main(["mlp", "--trials", "2", "--epochs", "1", "--storage", url, *TINY])
    err = capsys.readouterr().err
    states = [t.state for t in load(tmp_path / "s.db").get_trials()]
    if stuck:
        assert code == 1 and "device failed" in err and "2.4 GiB" in err
        assert "the trial failed" in err and "queued again" not in err
        assert states == [TrialState.FAIL]        # not queued again: it would fail again
    else:
        assert "device failed" not in err
        assert states[:2] == [TrialState.FAIL, TrialState.FAIL]   # the study went on
    reasons = [trial_value(t, "fail_reason") for t in load(tmp_path / "s.db").get_trials()]
    assert all(r.startswith("OutOfMemoryError") for r in reasons)
    assert integrity(tmp_path / "s.db") == "ok"


# 11 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ending", ["complete", "pruned", "failed", "diverged"])
def test_no_model_is_left_alive_after_a_trial_ends(ending, monkeypatch, tmp_path):
    """With the garbage collector off (gc.collect a no-op too), reference counting alone
    frees the model, its gradients and its optimizer when the trial ends."""
    models = []
    build = search.objective.build

    def tracked(name, config):
        model = build(name, config)
        models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(search.objective, "build", tracked)
    monkeypatch.setattr(search.objective.gc, "collect", lambda *a: 0)
    if ending == "failed":
        def failing_epoch(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        monkeypatch.setattr(search.train.trainer, "_train_epoch", failing_epoch)
    fixed = ({"lr": 10.0, "optimizer": "sgd", "activation": "relu", "batch_size": 64}
             if ending == "diverged" else {})
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", heartbeat=False)
    study = optuna.create_study(storage=store.optuna, direction="maximize", pruner=(
        optuna.pruners.ThresholdPruner(lower=2.0) if ending == "pruned"
        else optuna.pruners.NopPruner()))
    spec = StudySpec(model="mlp", epochs=2, fixed={
        "hidden_sizes": (16,) if ending != "diverged" else (512, 256), **fixed})
    objective = Objective(spec, Runtime(store, make_dataset("synthetic"), torch.device("cpu")))
    gc.disable()
    try:
        study.optimize(objective, n_trials=1, catch=(Exception,))
        assert models and models[-1]() is None, ending
    finally:
        gc.enable()
    assert study.trials[0].state == {"complete": TrialState.COMPLETE,
                                     "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
                                     "diverged": TrialState.PRUNED}[ending]
