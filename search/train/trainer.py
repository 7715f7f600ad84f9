"""The shared trainer: one model, one configuration, the data on one device. No Optuna here.

Each epoch runs the training step (steps.py: fixed-shape tensors, ready to be captured) once
per batch and steps the learning-rate schedule (schedules.py) after it; then it
evaluates the validation set and hands the run so far to `on_epoch`, which may ask to stop
(pruning). A `should_stop` callable (the caller's Ctrl-C or SIGTERM, noted: a plain check) is
read before every training step and evaluation batch; when it says stop, `Stopped` (a
KeyboardInterrupt) is raised there. It keeps the weights of the best validation epoch, gives
them back to the model at the end (also when stopped early), and evaluates the test set once
with them. A NaN or infinite
loss raises `Diverged` naming the epoch. On CUDA it trains in bf16 autocast with channels_last
and fused optimizers; on the CPU in bf16 autocast where the CPU has native bf16, else in fp32,
deterministically either way. The loop reads GPU values back once per epoch (plus one
finiteness check every 100 steps). On CUDA the steps are captured in CUDA graphs at their
first call and replayed after it (capture.py; `capture="off"` keeps them eager; a failed
capture warns once and the run goes on eagerly). With a `Checkpoint` (checkpoint.py) it
saves the whole training state off the critical path, between any two steps, and a run that
finds one resumes it: on the CPU exactly (same curves, same random numbers, to the last bit);
on CUDA with the same data order, augmentation and schedule, but not bit for bit (cuDNN's
autotuned kernels and atomics are not deterministic, and a capture's warm-up draws dropout
numbers an uninterrupted run does not).
"""
from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from search.train.capture import Capture, wanted
from search.train.checkpoint import Checkpoint
from search.train.data import Dataset, DeviceLoader
from search.train.errors import check
from search.train.schedules import make_scheduler
from search.train.steps import EvalStep, TrainStep, device_recipe, totals
from spaces import Config

EVAL_BATCH = 1024   # images per evaluation batch


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
    # Epochs that were the first a process trained (epoch 1, and the first after a resume):
    # their seconds include cudnn autotuning and warm caches, so the steady means leave them out.
    warmup_epochs: list[int] = field(default_factory=list)
    # Seconds spent capturing CUDA graphs (warm-up included; in the warm-up epochs' times);
    # None: the steps ran eagerly. A failed capture's reason, the run having gone on eagerly.
    capture_seconds: Optional[float] = None
    capture_failure: Optional[str] = None

    @property
    def best_val_acc(self) -> float:
        return max((e.val_acc for e in self.epochs), default=0.0)

    @property
    def first_epoch_seconds(self) -> Optional[float]:
        """Training seconds of epoch 1, warm-up included."""
        return self.epochs[0].train_seconds if self.epochs else None

    @property
    def steady_train_seconds(self) -> Optional[float]:
        """Mean training seconds per epoch without the warm-up epochs (all, if that is all)."""
        return self._steady("train_seconds")

    @property
    def steady_val_seconds(self) -> Optional[float]:
        return self._steady("val_seconds")

    def _steady(self, name: str) -> Optional[float]:
        steady = [e for e in self.epochs if e.epoch not in self.warmup_epochs] or self.epochs
        return statistics.mean(getattr(e, name) for e in steady) if steady else None

    def curves(self) -> dict[str, list[float]]:
        """Per-epoch lists: {"train_loss": [...], "val_acc": [...], ...}."""
        names = [n for n in asdict(self.epochs[0])] if self.epochs else []
        return {n: [getattr(e, n) for e in self.epochs] for n in names if n != "epoch"}


OnEpoch = Callable[["TrainResult"], Optional[bool]]  # sees the run so far; True stops it
OnStep = Callable[[int, int, int], None]             # (epoch, step, steps per epoch), 1-based


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
          seed: int = 0, on_epoch: OnEpoch | None = None, on_step: OnStep | None = None,
          checkpoint: Checkpoint | None = None, capture: str = "auto",
          should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train for config.epochs epochs; return the curves and the test result at the best epoch.

    `data` may already be on `device` (load it there once per process, not per trial).
    `on_step(epoch, step, steps_per_epoch)` follows every training step (host integers only,
    no GPU sync). With `checkpoint`, the state is saved as it says and a run finding a saved
    one of the same identity resumes it; the caller removes it when the trial is over.
    `capture`: "auto" captures the steps in CUDA graphs on CUDA (eager elsewhere), "off" never.
    `should_stop()` is read before each step and evaluation batch: True raises Stopped (a
    KeyboardInterrupt) there, so a stop ends the run within a step even where the signal's
    own KeyboardInterrupt was lost.
    When train() returns or raises, nothing of it keeps the model, optimizer, gradients or
    graphs alive.
    """
    run = None
    try:
        run = _Run(model, config, data, torch.device(device), seed, on_step, checkpoint,
                   Capture(wanted(capture, device)), should_stop)
        result = run.result
        if run.epoch <= config.epochs:
            result.warmup_epochs.append(run.epoch)
        for epoch in range(run.epoch, config.epochs + 1):
            started = time.perf_counter() - run.seconds   # a resumed epoch keeps its time
            if run.order is None:
                run.order = run.loader.shuffle()
                run.step.reset()
            batches = run.loader.batches(run.order, start=run.first_step)
            train_loss, train_acc = _train_epoch(run, batches, run.first_step, run.order, epoch)
            train_seconds = time.perf_counter() - started
            run.first_step, run.order, run.seconds = 0, None, 0.0
            val_loss, val_acc, val_seconds = run.evaluate(run.val_loader)
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss became {val_loss} in epoch {epoch}")
            run.end_epoch(EpochMetrics(epoch, train_loss, train_acc, val_loss, val_acc,
                                       train_seconds, val_seconds))
            if on_epoch is not None and on_epoch(result):
                result.stopped_early = True
                run.model.load_state_dict(run.best_state)   # the best epoch's, as promised
                return result
        if run.best_state is not None:
            run.model.load_state_dict(run.best_state)
        result.test_loss, result.test_acc, result.test_seconds = run.evaluate(run.test_loader)
        run.note_capture()   # the test split's last batch may have had a shape of its own
        return result
    except BaseException as error:
        # The traceback holds the frames below, and through them the model, its gradients and
        # the optimizer state, for as long as the caller keeps the exception (Optuna keeps a
        # pruned trial's): clear their locals, and drop this frame's own references.
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        if run is not None:
            run.release()        # the graphs and their memory pools go now
        run = model = data = on_epoch = on_step = should_stop = None
        if checkpoint is not None:
            checkpoint.flush()   # no write left running behind a returned or failed run


class _Run:
    """One train() call: the model with its optimizer, schedule, steps and data order, and the
    state a checkpoint saves and restores."""

    def __init__(self, model, config: Config, data: Dataset, device: torch.device, seed: int,
                 on_step: OnStep | None, checkpoint: Checkpoint | None, capture: Capture,
                 should_stop: Callable[[], bool] | None = None):
        self.model, self.config, self.device = model, config, device
        self.should_stop = should_stop
        self.on_step, self.checkpoint, self.capture = on_step, checkpoint, capture
        self.cuda = device.type == "cuda"
        data = data.to(device)  # a no-op where the caller put it there once per process
        memory, autocast = device_recipe(device)
        channels_last = memory == torch.channels_last
        model.to(device=device, memory_format=memory)
        self.optimizer = make_optimizer(model, config, device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        mean, std = data.normalisation()
        self.loader = DeviceLoader(data.train, mean, std, config.batch_size, train=True,
                                   generator=self.generator, channels_last=channels_last)
        self.val_loader, self.test_loader = (
            DeviceLoader(images, mean, std, EVAL_BATCH, train=False, channels_last=channels_last)
            for images in (data.val, data.test))
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # autotuned per input shape, kept for the process
        batch_shape = (min(config.batch_size, len(data.train)), *data.train.x.shape[1:])
        self.step = TrainStep(model, self.optimizer, batch_shape, device, memory, autocast,
                              config.label_smoothing, capture)
        self.eval_step = EvalStep(model, device, memory, autocast, capture)
        self.steps_per_epoch = len(self.loader)
        self.result, self.best_state = TrainResult(), None
        self.epoch, self.first_step, self.order, self.seconds = 1, 0, None, 0.0
        if checkpoint is not None:
            saved = checkpoint.resume({"config": config.as_dict(), "seed": seed,
                                       "steps_per_epoch": self.steps_per_epoch,
                                       "device": device.type})
            if saved is not None:
                self.restore(saved)
        self.capture_before = self.result.capture_seconds   # a resumed run's earlier captures
        self.scheduler = make_scheduler(
            self.optimizer, config, self.steps_per_epoch * config.epochs,
            steps_done=(self.epoch - 1) * self.steps_per_epoch + self.first_step)

    def end_epoch(self, metrics: EpochMetrics) -> None:
        """Record an epoch: its metrics, the best weights so far, a checkpoint if due."""
        result = self.result
        improved = not result.epochs or metrics.val_acc > result.best_val_acc
        result.epochs.append(metrics)
        self.note_capture()
        if improved:
            result.best_epoch = metrics.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.checkpoint is not None and self.checkpoint.due(epoch_end=True):
            self.save(metrics.epoch + 1, 0, None, 0.0)

    def note_capture(self) -> None:
        """The capture seconds (and a failure) so far into the result."""
        if self.capture.seconds:
            result = self.result
            result.capture_seconds = (self.capture_before or 0.0) + self.capture.seconds
            result.capture_failure = self.capture.failure

    def release(self) -> None:
        self.step.release()
        self.eval_step.release()

    def evaluate(self, loader: DeviceLoader) -> tuple[float, float, float]:
        return _evaluate(self.model, self.eval_step, loader, self.should_stop)

    def check_finite(self, epoch: int, step: int) -> None:
        if not torch.isfinite(self.step.loss_sum):
            raise Diverged(f"training loss became {self.step.loss_sum.item()} in epoch {epoch} "
                           f"(step {step})")

    # ------------------------------------------------------------ checkpoint state

    def save(self, epoch: int, first_step: int, order, seconds: float) -> None:
        """Hand the state to the checkpoint: next epoch to train, the step to start it at."""
        state = {
            "epoch": epoch, "first_step": first_step, "order": order, "seconds": seconds,
            "sums": [self.step.loss_sum, self.step.correct] if first_step else None,
            "result": asdict(self.result),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": {"generator": self.generator.get_state(), "cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.cuda else None},
        }
        self.checkpoint.save(state, self.result.best_epoch or None, self.best_state)

    def restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        _load_optimizer_state(self.optimizer, saved["optimizer"])
        rng = saved["rng"]
        self.generator.set_state(rng["generator"])
        torch.set_rng_state(rng["cpu"])
        if self.cuda:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        result = saved["result"]
        self.result = TrainResult(**{**result,
                                     "epochs": [EpochMetrics(**e) for e in result["epochs"]]})
        self.best_state = saved.get("best_state")
        self.epoch, self.first_step = saved["epoch"], saved["first_step"]
        self.seconds = saved["seconds"]
        if saved["order"] is not None:
            self.order = saved["order"].to(self.device)
            self.step.loss_sum.copy_(saved["sums"][0])
            self.step.correct.copy_(saved["sums"][1])


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The saved moments and step counts; lr, betas, momentum and weight decay stay those of
    the current config (load_state_dict would bring the saved ones), and the schedule is
    rebuilt from the config after this."""
    settings = [{k: v for k, v in group.items() if k != "params"}
                for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings):
        for key in [k for k in group if k != "params"]:
            del group[key]
        group.update(own)


def _train_epoch(run: _Run, batches, first_step: int, order, epoch: int) -> tuple[float, float]:
    """The rest of one epoch from batch number first_step + 1: (mean loss, accuracy).

    (tests/test_faults.py wraps this function: keep `batches` second and `epoch` fifth.)
    """
    run.model.train()
    step, steps_per_epoch, checkpoint = run.step, run.steps_per_epoch, run.checkpoint
    # A finiteness check reads a value back from the GPU: once per step on the CPU (free),
    # every 100 steps on CUDA so the GPU queue is never drained inside an epoch.
    check_every = 100 if run.cuda else 1
    started = time.perf_counter()
    for number, (images, labels) in enumerate(batches, start=first_step + 1):
        check(run.should_stop)   # a Python call per step: free beside the step itself
        step.load(images, labels)
        step()
        run.scheduler.step()
        if number % check_every == 0:
            run.check_finite(epoch, number)
        if run.on_step is not None:
            run.on_step(epoch, number, steps_per_epoch)
        if checkpoint is not None and number < steps_per_epoch and checkpoint.due():
            run.save(epoch, number, order, run.seconds + time.perf_counter() - started)
    loss_sum, correct = totals(step.loss_sum, step.correct)
    if not math.isfinite(loss_sum):
        raise Diverged(f"training loss became {loss_sum} in epoch {epoch}")
    seen = steps_per_epoch * step.batch_size
    return loss_sum / seen, correct / seen


def _evaluate(model: nn.Module, step: EvalStep, loader: DeviceLoader,
              should_stop: Callable[[], bool] | None = None) -> tuple[float, float, float]:
    started = time.perf_counter()
    model.eval()
    step.reset()
    for images, labels in loader:
        check(should_stop)
        step.load(images, labels)
        step()
    loss_sum, correct = totals(step.loss_sum, step.correct)
    n = max(len(loader.images), 1)
    return loss_sum / n, correct / n, time.perf_counter() - started


def evaluate(model: nn.Module, loader: DeviceLoader) -> tuple[float, float, float]:
    """(mean loss, accuracy, seconds) over every image of the loader, in eval mode, in the
    recipe train() uses on the model's device."""
    device = next(model.parameters()).device
    return _evaluate(model, EvalStep(model, device, *device_recipe(device)), loader)
