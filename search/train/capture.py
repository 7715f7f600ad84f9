"""CUDA graphs of the training and evaluation steps (search/train/steps.py): on CUDA, chosen
automatically (`--capture auto`, the default), never on the CPU or with `--capture off`.

On a GPU, small batches are bound by kernel launches: an eager ResNet18 epoch at batch 128
took 4.8 s on an H200, with forward and backward replayed from CUDA graphs 1.24 s
(../shared/gpu/README.md). How the steps are captured, and why:

- Training: `torch.cuda.make_graphed_callables` captures forward (model, loss, correct count)
  and backward as two graphs; the optimizer step stays outside them, fused (one multi-tensor
  kernel per step). So the learning-rate schedule works as it does eagerly (the fused step
  reads the group's lr each call; a whole-step graph would need a capturable optimizer with
  the lr as a device tensor and every scheduler writing into it in place), the optimizer
  state is never part of a graph (checkpoints save and restore it as they do eagerly), and
  the capture is the one a prototype measured on the H200 (README above).
- Evaluation: one `torch.cuda.CUDAGraph` per batch shape (a split has at most two: full
  batches and the last), holding forward and the additions to the running sums.
- Warm-up runs on a side stream before each capture (make_graphed_callables does it for
  training; cudnn autotunes there, not inside the graph). Its side effects are undone:
  BatchNorm's running statistics and batch count, and the evaluation sums, get back the
  values they had, so the first replay is the trial's real first step.
- Under capture BatchNorm still updates its running statistics (in place, inside the forward
  graph), dropout draws new numbers every replay (graph-safe RNG), and the loss sum stays on
  the device, so the loop's finiteness check is unchanged.
- Graphs belong to one trial: they hold the addresses of its model's parameters and buffers
  and bake in its dropout rate and label smoothing. A capture is paid once per trial and
  shape and replayed every epoch. Reusing graphs across trials with the same model shape and
  batch size would need a model kept per process and re-initialised in place; not done: cudnn
  keeps its autotuning per process anyway (the larger part of a first capture), the rest is
  a few seconds per trial, and a stale graph would train the wrong tensors silently.
- A capture that fails for any reason (an op that cannot be captured, out of memory) logs one
  warning line and the trial goes on eagerly, capture off for the rest of that trial.

This module imports on a machine without CUDA and touches CUDA only when a capture is tried.
"""
from __future__ import annotations

import inspect
import logging
import time
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from search.train.errors import first_line

log = logging.getLogger(__name__)

CAPTURE_CHOICES = ("auto", "off")
EVAL_WARMUP_STEPS = 2     # eager runs of an evaluation step before its capture (side stream)


def wanted(setting: str, device: torch.device) -> bool:
    """Whether to capture: `auto` on CUDA, never on other devices or with `off`."""
    if setting not in CAPTURE_CHOICES:
        raise ValueError(f"capture must be one of {', '.join(CAPTURE_CHOICES)}, not {setting!r}")
    return setting == "auto" and torch.device(device).type == "cuda"


class Capture:
    """One trial's capture: on until a capture fails, then off with one warning line.

    The steps ask it for graphs; it times the captures (warm-up included, in seconds) and
    keeps the first failure's reason.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seconds = 0.0
        self.failure: Optional[str] = None

    def train_graph(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    autocast: Optional[torch.dtype], label_smoothing: float
                    ) -> Optional[nn.Module]:
        """A module whose call (images, labels) -> (loss, correct count) replays the captured
        forward and whose backward replays the captured backward; None when capture is off
        or failed. `images` and `labels` are the step's static tensors."""
        if not self.enabled:
            return None
        step = LossAndCorrect(model, autocast, label_smoothing)
        return self._attempt("training", lambda: _graph_module(step, (images, labels)),
                             keep=_buffers(model))

    def eval_graph(self, forward: Callable[[], None], sums: list[torch.Tensor]
                   ) -> Optional[torch.cuda.CUDAGraph]:
        """A graph replaying `forward` (which reads static tensors and adds to `sums`), or
        None when capture is off or failed. The warm-up's additions to `sums` are undone."""
        if not self.enabled:
            return None
        return self._attempt("evaluation", lambda: _graph(forward), keep=sums)

    def _attempt(self, what: str, capture: Callable, keep: list[torch.Tensor]):
        """capture(), with `keep` as it was before, or None (and capture off) if it fails."""
        saved = [t.detach().clone() for t in keep]
        started = time.perf_counter()
        try:
            return capture()
        except Exception as error:   # never fails the trial: it goes on eagerly
            self.enabled = False
            self.failure = f"{type(error).__name__}: {first_line(error)}"
            log.warning("CUDA graph capture of the %s step failed (%s); this trial goes on "
                        "without CUDA graphs", what, self.failure)
            return None
        finally:
            with torch.no_grad():    # the warm-up's updates (BatchNorm statistics, sums) go
                for tensor, value in zip(keep, saved):
                    tensor.copy_(value)
            self.seconds += time.perf_counter() - started


class LossAndCorrect(nn.Module):
    """What the training forward graph holds: the model, its loss, and the correct count.

    Autocast runs inside, without its weight cache (make_graphed_callables requires that:
    cached casts from outside a capture would be read by every replay).
    """

    def __init__(self, model: nn.Module, autocast: Optional[torch.dtype],
                 label_smoothing: float):
        super().__init__()
        self.model, self.autocast, self.label_smoothing = model, autocast, label_smoothing

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        with torch.autocast(images.device.type, dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None, cache_enabled=False):
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, (logits.argmax(1) == labels).sum()


def release(graphed: Optional[nn.Module]) -> None:
    """Let a graphed module's graphs (and their memory pool) go with it: make_graphed_callables
    sets an instance `forward` whose closure refers back to the module, a reference cycle
    that only the garbage collector would break."""
    if graphed is not None:
        graphed.__dict__.pop("forward", None)


# ---------------------------------------------------------------- torch's capture calls

def _graph_module(module: nn.Module, sample: tuple[torch.Tensor, ...]) -> nn.Module:
    """torch.cuda.make_graphed_callables on one module (warm-up on a side stream, then the
    forward and backward captures), errors in other threads not invalidating the capture
    where this torch lets us say so (a checkpoint writer may wait on a CUDA event)."""
    options = {}
    if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters:
        options["capture_error_mode"] = "thread_local"
    with warnings.catch_warnings():
        # The warm-up's backward on the side stream meets AccumulateGrad nodes made on the
        # default stream (torch 2.11 warns once per process, a 9-line message on a user's
        # terminal); the capture that follows syncs the streams itself, and captures
        # correctly (bench/capture_checks.py: loss and BatchNorm statistics as eager).
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
        return torch.cuda.make_graphed_callables(module, sample, **options)


def _graph(forward: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """Warm `forward` up on a side stream, then capture it into a graph."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(EVAL_WARMUP_STEPS):
            forward()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        forward()
    return graph


def _buffers(model: nn.Module) -> list[torch.Tensor]:
    """The tensors a training warm-up changes besides gradients: BatchNorm's running mean,
    variance and batch count (every buffer, to be safe)."""
    return list(model.buffers())
