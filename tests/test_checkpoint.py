"""search.train.checkpoint with search.train.trainer: a killed run resumes exactly (after an epoch, in the
middle of one, with dropout, with a schedule, after a real SIGKILL), saves come no more often
than asked, the best weights are written only when they change, and every fault (truncated or
foreign file, tampered settings, full disk, failing write) ends in a warning and a clean start,
never a lost trial, a stray .partial file or a thread left running."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import search.train.checkpoint
from search.train.checkpoint import Checkpoint, check_every_seconds
from search.train.data import make_dataset
from search.train.models import build
from search.train.trainer import train
from spaces import Config

REPO = Path(__file__).resolve().parents[1]
LEARNED = ("train_loss", "train_acc", "val_loss", "val_acc")
SMALL = Config(epochs=4, batch_size=64, hidden_sizes=(32,), drop_rate=0.2, optimizer="adamw")
MIXER = Config(epochs=3, batch_size=100, patch_size=8, embed_dim=32, num_blocks=2,
               drop_rate=0.2, lr=0.003)


class Killed(Exception):
    """Stands in for a worker killed at that moment."""


@pytest.fixture(scope="module")
def data():   # 640 train (10 batches of 64) / 200 val / 200 test images
    return make_dataset("synthetic", seed=0, train_subset=640, test_subset=200)


def fresh(config: Config = SMALL, model: str = "mlp"):
    torch.manual_seed(0)
    return build(model, config)


def learned(result) -> dict[str, list[float]]:
    curves = result.curves()
    return {name: curves[name] for name in LEARNED}


def kill_after_epoch(k: int):
    def on_epoch(result):
        if len(result.epochs) == k:
            raise Killed
    return on_epoch


def kill_at_step(epoch: int, step: int, checkpoint: Checkpoint | None = None):
    def on_step(e, s, steps):
        if checkpoint is not None:
            checkpoint.flush()    # every save lands before the next step: a known last save
        if (e, s) == (epoch, step):
            raise Killed
    return on_step


def saved_state(checkpoint: Checkpoint) -> dict:
    return torch.load(checkpoint.path, weights_only=True)["state"]


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("checkpoint ")]


def resume(config, data, checkpoint, model="mlp", seed=1):
    """Train from the checkpoint; (result, epochs run, first (epoch, step) trained)."""
    torch.manual_seed(12345)   # a new process: the global RNG is wherever it is
    epochs, steps = [], []
    result = train(fresh(config, model), config, data, seed=seed, checkpoint=checkpoint,
                   on_epoch=lambda r: epochs.append(r.epochs[-1].epoch),
                   on_step=lambda e, s, n: steps.append((e, s)))
    return result, epochs, steps[:1]


# ---------------------------------------------------------------- exact resumption

def test_every_0_loses_no_finished_epoch_and_the_resumed_curves_are_exact(data, tmp_path):
    uninterrupted = train(fresh(), SMALL, data, seed=1)
    checkpoint = Checkpoint(tmp_path / "new" / "t.pt", every_seconds=0, identity={"trial": 7})
    with pytest.raises(Killed):          # killed in the middle of epoch 3
        train(fresh(), SMALL, data, seed=1, checkpoint=checkpoint,
              on_step=kill_at_step(3, 5))
    assert saved_state(checkpoint)["epoch"] == 3 and not checkpoint_threads()
    result, epochs, first = resume(SMALL, data, Checkpoint(checkpoint.path, 0, {"trial": 7}))
    assert epochs == [3, 4] and first == [(3, 1)]       # epochs 1-2 kept, 3 from its start
    assert [e.epoch for e in result.epochs] == [1, 2, 3, 4]
    assert learned(result) == learned(uninterrupted)
    assert result.test_acc == uninterrupted.test_acc
    assert result.warmup_epochs == [1, 3]               # both processes' first epochs


def test_a_run_resumes_exactly_in_the_middle_of_an_epoch(data, tmp_path):
    uninterrupted = train(fresh(), SMALL, data, seed=1)
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=1e-9)   # whenever none runs
    with pytest.raises(Killed):
        train(fresh(), SMALL, data, seed=1, checkpoint=checkpoint,
              on_step=kill_at_step(2, 9, checkpoint))
    state = saved_state(checkpoint)
    assert (state["epoch"], state["first_step"]) == (2, 8)   # the last step before the kill
    result, epochs, first = resume(SMALL, data, Checkpoint(checkpoint.path, 1e-9))
    assert first == [(2, 9)] and epochs == [2, 3, 4]
    assert learned(result) == learned(uninterrupted)
    assert result.test_acc == uninterrupted.test_acc


def test_a_mixer_with_dropout_resumes_with_the_same_random_numbers(data, tmp_path):
    uninterrupted = train(fresh(MIXER, "mlpmixer"), MIXER, data, seed=1)
    checkpoint = Checkpoint(tmp_path / "mixer.pt", every_seconds=0)
    with pytest.raises(Killed):
        train(fresh(MIXER, "mlpmixer"), MIXER, data, seed=1, checkpoint=checkpoint,
              on_epoch=kill_after_epoch(1))
    result, epochs, _ = resume(MIXER, data, checkpoint, model="mlpmixer")
    assert epochs == [2, 3]
    assert learned(result) == learned(uninterrupted)      # dropout masks included
    assert result.test_acc == uninterrupted.test_acc


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_a_stopped_run_continues_its_schedule_exactly(data, tmp_path, schedule):
    config = SMALL.replace(schedule=schedule, lr=0.01)
    uninterrupted = train(fresh(config), config, data, seed=1)
    checkpoint = Checkpoint(tmp_path / f"{schedule}.pt", every_seconds=0)
    first = train(fresh(config), config, data, seed=1, checkpoint=checkpoint,
                  on_epoch=lambda r: len(r.epochs) == 2)           # stopped (pruned) after 2
    assert first.stopped_early and checkpoint.path.exists()
    result, epochs, _ = resume(config, data, checkpoint)
    assert epochs == [3, 4]
    assert learned(result) == learned(uninterrupted)
    assert result.test_acc == uninterrupted.test_acc


def test_a_finished_checkpoint_runs_no_more_epochs(data, tmp_path):
    checkpoint = Checkpoint(tmp_path / "done.pt", every_seconds=0)
    done = train(fresh(), SMALL, data, checkpoint=checkpoint)
    again, epochs, _ = resume(SMALL, data, checkpoint, seed=0)
    assert epochs == [] and learned(again) == learned(done) and again.test_acc == done.test_acc


def test_the_lr_and_betas_come_from_the_config_not_the_file(data, tmp_path):
    """Even a file whose identity matches cannot bring another learning rate or betas."""
    uninterrupted = train(fresh(), SMALL, data, seed=1)
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=0)
    with pytest.raises(Killed):
        train(fresh(), SMALL, data, seed=1, checkpoint=checkpoint, on_epoch=kill_after_epoch(2))
    blob = torch.load(checkpoint.path, weights_only=True)
    for group in blob["state"]["optimizer"]["param_groups"]:
        group.update(lr=10.0, betas=(0.1, 0.2), weight_decay=0.5, initial_lr=10.0)
    torch.save(blob, checkpoint.path)
    result, epochs, _ = resume(SMALL, data, checkpoint)
    assert epochs == [3, 4] and learned(result) == learned(uninterrupted)


# ---------------------------------------------------------------- how often, and which files

def test_with_60_seconds_a_short_run_writes_nothing(data, tmp_path):
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=60)
    written = []
    train(fresh(), SMALL.replace(epochs=2), data, checkpoint=checkpoint,
          on_epoch=lambda r: written.append(checkpoint.files()))
    assert written == [[], []] and list(tmp_path.iterdir()) == []


def test_the_best_weights_are_written_only_when_the_best_epoch_changes(data, tmp_path,
                                                                       monkeypatch):
    writes = []
    real = search.train.checkpoint._atomic_save
    monkeypatch.setattr(search.train.checkpoint, "_atomic_save",
                        lambda blob, path: writes.append(path.name) or real(blob, path))
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=0)
    model = fresh()

    def spoil_after_two(result):    # epoch 3 starts from noise: it cannot beat epoch 2
        if len(result.epochs) == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0).add_(torch.randn_like(p))
    result = train(model, SMALL.replace(epochs=5), data, checkpoint=checkpoint,
                   on_epoch=spoil_after_two)
    val = result.curves()["val_acc"]
    improved = [e for e in range(1, 6) if val[e - 1] > max(val[:e - 1], default=-1)]
    assert improved[:2] == [1, 2] and 3 not in improved
    assert [w for w in writes if ".best" in w] == [f"t.pt.best{e}" for e in improved]
    assert writes.count("t.pt") == 5
    assert [p.name for p in checkpoint.files()] == ["t.pt", f"t.pt.best{result.best_epoch}"]
    checkpoint.remove()
    assert list(tmp_path.iterdir()) == [] and not checkpoint_threads()


def test_remove_waits_for_the_write_in_flight_and_leaves_nothing(data, tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = search.train.checkpoint._atomic_save

    def slow(blob, path):
        started.set()
        release.wait(30)
        real(blob, path)
    monkeypatch.setattr(search.train.checkpoint, "_atomic_save", slow)
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=0)
    checkpoint.resume()
    checkpoint.save({"weights": torch.ones(3)}, 1, {"w": torch.ones(3)})
    assert started.wait(30) and checkpoint_threads()
    threading.Timer(0.2, release.set).start()
    checkpoint.remove()                              # waits, then deletes what was written
    assert not checkpoint_threads() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- faults

def test_a_truncated_file_is_discarded_with_a_warning_and_training_starts_over(
        data, tmp_path, caplog):
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=0)
    with pytest.raises(Killed):
        train(fresh(), SMALL, data, seed=1, checkpoint=checkpoint, on_epoch=kill_after_epoch(2))
    size = checkpoint.path.stat().st_size
    with open(checkpoint.path, "r+b") as file:
        file.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="search.train.checkpoint"):
        result, epochs, _ = resume(SMALL, data, checkpoint)
    assert epochs == [1, 2, 3, 4] and len(result.epochs) == 4
    [record] = caplog.records
    assert "t.pt discarded: it is unreadable" in record.getMessage()
    assert "starts from epoch 1" in record.getMessage() and "\n" not in record.getMessage()


def test_a_checkpoint_of_the_old_trainer_is_discarded_with_a_warning(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save({"result": {"epochs": []}, "best_state": None, "model": {},
                "generator": torch.Generator().get_state()}, path)
    with caplog.at_level(logging.WARNING, logger="search.train.checkpoint"):
        assert Checkpoint(path, every_seconds=0).resume({"config": {}}) is None
    [record] = caplog.records
    assert "written by another version of the trainer" in record.getMessage()
    assert not path.exists()


def test_a_foreign_pickle_is_discarded_in_one_line_of_ours(tmp_path, caplog):
    """Not PyTorch's paragraph advising weights_only=False (that would run the file's code)."""
    path = tmp_path / "foreign.pt"
    torch.save({"format": object()}, path)              # a pickle of more than tensors
    with caplog.at_level(logging.WARNING, logger="search.train.checkpoint"):
        assert Checkpoint(path, every_seconds=0).resume({"config": {}}) is None
    [record] = caplog.records
    message = record.getMessage()
    assert "foreign.pt discarded: it is unreadable (not a checkpoint of this trainer" in message
    assert "weights_only" not in message and "\n" not in message
    assert not path.exists()


def test_a_checkpoint_of_another_configuration_is_discarded_with_a_warning(
        data, tmp_path, caplog):
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=0, identity={"study": 1})
    with pytest.raises(Killed):
        train(fresh(), SMALL, data, seed=1, checkpoint=checkpoint, on_epoch=kill_after_epoch(1))
    other = SMALL.replace(lr=1e-4)
    with caplog.at_level(logging.WARNING, logger="search.train.checkpoint"):
        _, epochs, _ = resume(other, data, Checkpoint(checkpoint.path, 0, {"study": 2}))
    assert epochs == [1, 2, 3, 4]
    [record] = caplog.records
    assert "written for another run (differs in config.lr, study)" in record.getMessage()


def test_a_full_disk_leaves_no_partial_file_and_training_goes_on(data, tiny_disk, caplog):
    checkpoint = Checkpoint(tiny_disk / "t.pt", every_seconds=0)
    with caplog.at_level(logging.WARNING, logger="search.train.checkpoint"):
        result = train(fresh(), SMALL, data, seed=1, checkpoint=checkpoint)
    assert len(result.epochs) == 4 and result.test_acc is not None
    assert list(tiny_disk.iterdir()) == [] and shutil.disk_usage(tiny_disk).used == 0
    [record] = caplog.records                          # one warning for four failed saves
    assert "could not be written (OSError" in record.getMessage()
    assert "No space left on device" in record.getMessage()
    assert not checkpoint_threads()


def test_a_write_failing_midway_leaves_no_partial_file(data, tmp_path, monkeypatch, caplog):
    real_open = open

    class FailingMidway:
        def __init__(self, path):
            self.file = real_open(path, "wb")

        def write(self, data):
            self.file.write(bytes(data[:1000]))          # part of the file is on disk
            self.file.flush()
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()
    monkeypatch.setattr(search.train.checkpoint, "open", lambda path, mode: FailingMidway(path),
                        raising=False)
    checkpoint = Checkpoint(tmp_path / "t.pt", every_seconds=0)
    with caplog.at_level(logging.WARNING, logger="search.train.checkpoint"):
        result = train(fresh(), SMALL.replace(epochs=2), data, checkpoint=checkpoint)
    assert len(result.epochs) == 2 and list(tmp_path.iterdir()) == []
    assert len(caplog.records) == 1


def test_ctrl_c_while_a_write_starts_stays_a_keyboard_interrupt(data, tmp_path, monkeypatch):
    """Ctrl-C inside Thread.start(): flush() must not turn it into "cannot join thread"."""
    class StartInterrupted(threading.Thread):
        def start(self):
            raise KeyboardInterrupt
    monkeypatch.setattr(search.train.checkpoint.threading, "Thread", StartInterrupted)
    with pytest.raises(KeyboardInterrupt):
        train(fresh(), SMALL, data, checkpoint=Checkpoint(tmp_path / "t.pt", every_seconds=0))


def test_a_negative_interval_is_refused_with_one_clear_line():
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^the checkpoint interval must be 0 \(after "
                                             r"every epoch\) or a positive number of seconds"):
            check_every_seconds(bad)
        with pytest.raises(ValueError):
            Checkpoint("x.pt", every_seconds=bad)
    assert check_every_seconds(0) == 0.0 and check_every_seconds(60) == 60.0


# ---------------------------------------------------------------- a real SIGKILL

CHILD = r"""
import json, sys, threading, torch
from search.train.checkpoint import Checkpoint
from search.train.data import make_dataset
from search.train.models import build
from search.train.trainer import train
from spaces import Config
torch.set_num_threads(1)
mode, path, out = sys.argv[1:]
config = Config(epochs=5, batch_size=64, hidden_sizes=(32,), drop_rate=0.2)
torch.manual_seed(0)
model = build("mlp", config)
data = make_dataset("synthetic", seed=0, train_subset=640, test_subset=200)
epochs = []
def on_epoch(result):
    epochs.append(result.epochs[-1].epoch)
    print("epoch", epochs[-1], flush=True)
def on_step(epoch, step, steps):
    if mode == "killed" and (epoch, step) == (4, 1):
        threading.Event().wait()        # hang until killed: the parent decides when
checkpoint = Checkpoint(path, every_seconds=0) if mode != "reference" else None
result = train(model, config, data, seed=1, on_epoch=on_epoch, on_step=on_step,
               checkpoint=checkpoint)
json.dump({"epochs": epochs, "curves": result.curves(), "test_acc": result.test_acc},
          open(out, "w"))
"""


def run_child(mode: str, checkpoint: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(checkpoint), str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_sigkilled_process_is_resumed_by_the_next_one(tmp_path):
    checkpoint = tmp_path / "trial.pt"
    killed = run_child("killed", checkpoint, tmp_path / "killed.json")
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():                # its first checkpoint: epoch 1 is safe
            assert killed.poll() is None, killed.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        if killed.poll() is None:
            killed.kill()
    reported = [int(line.split()[1]) for line in killed.stdout.read().split("\n") if line]
    kept = torch.load(checkpoint, weights_only=True)["state"]["epoch"] - 1
    # The file may land before the killed process printed its epoch: it is at most one ahead.
    assert 1 <= kept <= 3 and reported == list(range(1, len(reported) + 1))
    assert kept <= len(reported) + 1

    resumed = run_child("resumed", checkpoint, tmp_path / "resumed.json")
    reference = run_child("reference", checkpoint, tmp_path / "reference.json")
    for child in (resumed, reference):
        assert child.wait(timeout=300) == 0, child.stderr.read()
    resumed, reference = (json.loads((tmp_path / f"{name}.json").read_text())
                          for name in ("resumed", "reference"))
    assert resumed["epochs"] == list(range(kept + 1, 6))    # each epoch after the kill once
    for name in LEARNED:
        assert resumed["curves"][name] == reference["curves"][name], name
    assert resumed["test_acc"] == reference["test_acc"]
