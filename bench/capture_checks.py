"""Checks of the CUDA-graph capture (search/train/capture.py) that need a GPU.

bench/gpu_check.py runs them on the device machine (which has no pytest) and
tests/test_capture.py wherever CUDA is visible. Each returns a `Check`: its name, whether it
passed, and the numbers it saw. They train a small convolutional net with BatchNorm on the
synthetic data (seconds each), except the out-of-memory check (ResNet18 through the command
line, a few trials).
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import search.train.capture
from reports.trial_data import trial_value
from search.train.data import Dataset, make_dataset
from search.train.trainer import TrainResult, train
from spaces import Config

CONFIG = Config(epochs=2, batch_size=64, optimizer="adamw", lr=1e-3)
LOSS_TOLERANCE = 0.02       # relative, per epoch: captured against eager training
OOM_CAP_BYTES = 2 << 30     # the cap of the out-of-memory check: batch 1024 cannot fit


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


class SmallNet(nn.Module):
    """Two conv + BatchNorm layers and a linear head; `uncapturable` reads a value back to the
    host in forward (a sync no CUDA graph can hold)."""

    def __init__(self, uncapturable: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(32 * 4 * 4, 10)
        self.uncapturable = uncapturable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.uncapturable and x.sum().item() == float("inf"):
            x = x * 0
        return self.head(x)


def _train(data: Dataset, config: Config = CONFIG, capture: str = "auto", seed: int = 0,
           **options) -> tuple[TrainResult, nn.Module]:
    torch.manual_seed(seed)
    model = SmallNet(**options)
    return train(model, config, data, device="cuda", seed=seed, capture=capture), model


def _loss_gap(a: TrainResult, b: TrainResult) -> float:
    """Largest relative difference of the per-epoch training losses."""
    return max(abs(x.train_loss - y.train_loss) / max(abs(y.train_loss), 1e-12)
               for x, y in zip(a.epochs, b.epochs))


def check_matches_eager(data: Dataset) -> Check:
    """Captured training follows eager training, BatchNorm's statistics included."""
    captured, model_c = _train(data)
    eager, model_e = _train(data, capture="off")
    bn_c, bn_e = model_c.features[1], model_e.features[1]
    steps = CONFIG.epochs * (len(data.train) // CONFIG.batch_size)
    gap = _loss_gap(captured, eager)
    stats_gap = (bn_c.running_mean - bn_e.running_mean).abs().max().item()
    passed = (captured.capture_seconds is not None and captured.capture_failure is None
              and gap <= LOSS_TOLERANCE and int(bn_c.num_batches_tracked) == steps
              and bn_c.running_mean.abs().max().item() > 0 and stats_gap < 0.05)
    return Check("captured training matches eager (BatchNorm statistics too)", passed,
                 f"loss gap {gap:.4f} (<= {LOSS_TOLERANCE}); BatchNorm batches "
                 f"{int(bn_c.num_batches_tracked)} of {steps}, running mean gap {stats_gap:.4f}; "
                 f"capture {captured.capture_seconds or 0:.2f} s")


def check_schedule(data: Dataset) -> Check:
    """The learning-rate schedule acts under capture as it does eagerly."""
    config = CONFIG.replace(schedule="onecycle", lr=3e-3)
    captured, _ = _train(data, config)
    eager, _ = _train(data, config, capture="off")
    constant, _ = _train(data, config.replace(schedule="constant"))
    gap, apart = _loss_gap(captured, eager), _loss_gap(captured, constant)
    passed = gap <= LOSS_TOLERANCE and apart > 10 * gap
    return Check("the schedule works under capture", passed,
                 f"onecycle captured vs eager loss gap {gap:.4f}; vs constant {apart:.4f}")


def check_captured_once(data: Dataset) -> Check:
    """One training capture per trial and one evaluation capture per batch shape, replayed
    over every epoch."""
    counts = {"train": 0, "eval": 0}
    real_module, real_graph = search.train.capture._graph_module, search.train.capture._graph

    def count_module(*args):
        counts["train"] += 1
        return real_module(*args)

    def count_graph(*args):
        counts["eval"] += 1
        return real_graph(*args)

    search.train.capture._graph_module, search.train.capture._graph = count_module, count_graph
    try:
        result, _ = _train(data, CONFIG.replace(epochs=3))
    finally:
        search.train.capture._graph_module, search.train.capture._graph = real_module, real_graph
    shapes = {len(data.val) % 1024 or 1024, len(data.test) % 1024 or 1024}
    if len(data.val) > 1024 or len(data.test) > 1024:
        shapes.add(1024)
    passed = counts == {"train": 1, "eval": len(shapes)} and result.capture_failure is None
    return Check("captured once per trial and shape, replayed every epoch", passed,
                 f"{counts['train']} training and {counts['eval']} evaluation captures over 3 "
                 f"epochs ({len(shapes)} evaluation shapes)")


class _Count(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def check_fallback(data: Dataset) -> Check:
    """A model with an op no graph can hold trains eagerly after one warning, and the next
    trial captures again."""
    lines = _Count()
    search.train.capture.log.addHandler(lines)
    _allocated()
    before = torch.cuda.memory_reserved()
    try:
        failed, _ = _train(data, uncapturable=True)
        # Reserved, not allocated: a failed capture's private pool shows as memory reserved
        # but unallocated that empty_cache cannot give back (seen on an H200 after an OOM
        # inside a capture: 2.4 GiB, and every later trial of that process out of memory).
        _allocated()
        kept = torch.cuda.memory_reserved() - before
        after, _ = _train(data)
    finally:
        search.train.capture.log.removeHandler(lines)
    passed = (failed.capture_failure is not None and len(lines.lines) == 1
              and failed.best_val_acc > 0.3 and after.capture_failure is None
              and after.capture_seconds is not None and kept < 64 << 20)
    return Check("a failed capture: one warning, eager training, the next trial captures",
                 passed, f"{len(lines.lines)} warning(s): {lines.lines[:1]}; val acc "
                         f"{failed.best_val_acc:.3f}; next trial captured: "
                         f"{after.capture_failure is None}; {kept / 2**20:.0f} MiB kept "
                         f"after the failed trial")


def check_out_of_memory() -> Check:
    """Under a memory cap, batch 1024 runs out of memory: that trial fails, and either the
    other trial completes in the same process or, where the failure left memory stuck, the
    process stops with one line and the other trial waits for a new process."""
    import optuna
    from search.cli import main
    said = io.StringIO()
    before = _allocated()
    # The cap counts all this process has reserved, the earlier checks' leftovers too: allow
    # OOM_CAP_BYTES on top of those, so the cap is the same whatever ran before.
    held = torch.cuda.memory_reserved()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((held + OOM_CAP_BYTES) / total)
    try:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/oom.db"
            with contextlib.redirect_stderr(said):
                code = main(["resnet18", "--data", "synthetic", "--epochs", "1", "--storage",
                             url, "--grid", "batch_size=1024,32", "--pruner", "none"])
            trials = optuna.load_study(study_name="resnet18-grid-batch_size",
                                       storage=url).trials
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    left = _allocated() - before
    stuck = torch.cuda.memory_reserved() - held   # reserved after empty_cache: a leaked pool
    big = [t for t in trials if t.params.get("batch_size") == 1024]
    small = [t for t in trials if t.params.get("batch_size") == 32]
    # Either the small trial completes in this process, or the memory the big one left
    # reserved made this process stop (search/gpu_share.stuck_memory) with the point queued
    # for a new one: never the small trial failing for the big one's memory.
    small_states = [t.state.name for t in small]
    stopped = "stayed reserved" in said.getvalue()
    tried = [t for t in big if t.state.name != "WAITING"]   # a grid point's retry waits
    passed = (bool(tried) and all(t.state.name == "FAIL" and trial_value(
        t, "fail_reason", "").startswith("OutOfMemoryError") for t in tried)
        and (small_states == ["COMPLETE"] or (stopped and small_states == ["WAITING"]))
        and left < 64 << 20)
    return Check("out of memory under a cap fails that trial only", passed,
                 f"exit {code}; {'stopped: memory stuck; ' if stopped else ''}"
                 f"batch 1024: {[t.state.name for t in big]} "
                 f"({trial_value(big[0], 'fail_reason', '')[:60] if big else ''}); "
                 f"batch 32: {[t.state.name for t in small]}; {left / 2**20:.0f} MiB left; "
                 f"{held / 2**20:.0f} MiB held before, cap that + 2 GiB; {stuck / 2**20:.0f} MiB "
                 f"still reserved after; "
                 f"fail reasons {[trial_value(t, 'fail_reason', '')[-160:] for t in trials]}")


def _allocated() -> int:
    """Bytes held by tensors, without cuBLAS's workspaces (one per stream a capture's warm-up
    used, from torch's pool of streams: bounded, and not a trial's memory)."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def run_all() -> list[Check]:
    """Every check, each failing alone (an exception is a failed check, with its line)."""
    data = make_dataset("synthetic", seed=0).to("cuda")
    checks = [(check_matches_eager, (data,)), (check_schedule, (data,)),
              (check_captured_once, (data,)), (check_fallback, (data,)),
              (check_out_of_memory, ())]
    results = []
    for check, args in checks:
        try:
            results.append(check(*args))
        except Exception as error:
            results.append(Check(check.__name__, False,
                                 f"{type(error).__name__}: {error}"[:300]))
    return results


if __name__ == "__main__":
    for check in run_all():
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
