"""The shared trainer: one model, one configuration, the data on one device. No Optuna here.

After each epoch it hands the run so far (train/validation loss and accuracy, seconds per
epoch) to `on_epoch`, which may ask to stop (pruning). It keeps the weights of the best validation epoch and evaluates the test set
once with them. A NaN or infinite loss raises `Diverged` naming the epoch. On CUDA it trains in
bf16 autocast with channels_last and fused optimizers; on the CPU in fp32, deterministically.
The loop reads GPU values back once per epoch (plus one finiteness check every 100 steps).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from search.data import Dataset, DeviceLoader
from spaces import Config


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochMetrics:
    epoch: int              # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    train_seconds: float
    val_seconds: float


@dataclass
class TrainResult:
    epochs: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False     # on_epoch asked to stop (a pruned trial)
    test_loss: Optional[float] = None
    test_acc: Optional[float] = None
    test_seconds: Optional[float] = None

    @property
    def best_val_acc(self) -> float:
        return max((e.val_acc for e in self.epochs), default=0.0)

    def curves(self) -> dict[str, list[float]]:
        """Per-epoch lists: {"train_loss": [...], "val_acc": [...], ...}."""
        names = [n for n in asdict(self.epochs[0])] if self.epochs else []
        return {n: [getattr(e, n) for e in self.epochs] for n in names if n != "epoch"}


OnEpoch = Callable[["TrainResult"], Optional[bool]]  # sees the run so far; True stops it


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is visible")
    return torch.device(name)


def make_optimizer(model: nn.Module, config: Config, device: torch.device):
    """sgd (plain), momentum (SGD + momentum), adam and adamw (momentum = beta1)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    params, lr, wd = model.parameters(), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, **fused)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd, **fused)
    betas = (config.momentum, 0.999)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd, **fused)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd, **fused)


def train(model: nn.Module, config: Config, data: Dataset, *, device: torch.device | str = "cpu",
          seed: int = 0, on_epoch: OnEpoch | None = None,
          checkpoint: Path | None = None) -> TrainResult:
    """Train for config.epochs epochs; return the curves and the test result at the best epoch.

    `data` may already be on `device` (load it there once per process, not per trial).
    With `checkpoint`, the state is saved after each epoch and a run finding one resumes
    after its last finished epoch; the caller removes it when the run is over.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    data = data.to(device)
    memory = torch.channels_last if cuda else torch.contiguous_format
    model.to(device=device, memory_format=memory)
    optimizer = make_optimizer(model, config, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    mean, std = data.normalisation()
    loader = DeviceLoader(data.train, mean, std, config.batch_size, train=True,
                          generator=generator, channels_last=cuda)
    eval_loader = lambda images: DeviceLoader(images, mean, std, 1024, train=False,
                                              channels_last=cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True  # autotuned per input shape, kept for the process

    result, best_state = TrainResult(), None
    if checkpoint is not None and Path(checkpoint).exists():
        result, best_state = _load_checkpoint(checkpoint, model, optimizer, generator)

    for epoch in range(len(result.epochs) + 1, config.epochs + 1):
        started = time.perf_counter()
        train_loss, train_acc = _train_epoch(model, loader, optimizer, cuda, epoch)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc, val_seconds = evaluate(model, eval_loader(data.val), cuda)
        if not math.isfinite(val_loss):
            raise Diverged(f"validation loss became {val_loss} in epoch {epoch}")
        metrics = EpochMetrics(epoch, train_loss, train_acc, val_loss, val_acc,
                               train_seconds, val_seconds)
        improved = not result.epochs or val_acc > result.best_val_acc
        result.epochs.append(metrics)
        if improved:
            result.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if checkpoint is not None:
            _save_checkpoint(checkpoint, result, best_state, model, optimizer, generator)
        if on_epoch is not None and on_epoch(result):
            result.stopped_early = True
            return result

    if best_state is not None:
        model.load_state_dict(best_state)
    result.test_loss, result.test_acc, result.test_seconds = evaluate(
        model, eval_loader(data.test), cuda)
    return result


def _train_epoch(model, loader, optimizer, cuda: bool, epoch: int) -> tuple[float, float]:
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    # A finiteness check reads a value back from the GPU: once per step on the CPU (free),
    # every 100 steps on CUDA so the GPU queue is never drained inside an epoch.
    check_every = 100 if cuda else 1
    for step, (x, y) in enumerate(loader, start=1):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if step % check_every == 0 and not torch.isfinite(loss_sum):
            raise Diverged(f"training loss became {loss_sum.item()} in epoch {epoch} "
                           f"(step {step})")
    loss_value, correct_value = torch.stack([loss_sum, correct.float()]).tolist()
    if not math.isfinite(loss_value):
        raise Diverged(f"training loss became {loss_value} in epoch {epoch}")
    return loss_value / max(seen, 1), correct_value / max(seen, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, cuda: bool) -> tuple[float, float, float]:
    """(mean loss, accuracy, seconds) over every image of the loader, in eval mode."""
    started = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    loss_value, correct_value = torch.stack([loss_sum, correct.float()]).tolist()
    n = max(len(loader.images), 1)
    return loss_value / n, correct_value / n, time.perf_counter() - started


def _save_checkpoint(path, result, best_state, model, optimizer, generator) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"result": asdict(result), "best_state": best_state,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state()}, partial)
    partial.replace(path)  # atomic: a worker killed mid-save leaves the previous epoch's


def _load_checkpoint(path, model, optimizer, generator):
    blob = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    generator.set_state(blob["generator"].cpu())
    saved = blob["result"]
    result = TrainResult(**{**saved, "epochs": [EpochMetrics(**e) for e in saved["epochs"]]})
    return result, blob["best_state"]
