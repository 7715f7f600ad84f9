"""The training and evaluation steps: one function each over tensors of fixed shape, in the
device's recipe (memory format and autocast precision).

Each batch is copied into preallocated (static) input and label tensors; a step reads only
those, and adds its loss and correct count to running sums kept on the device. No Python branch
depends on the data and nothing is read back to the host, so a step is what a CUDA graph can
capture and replay: given a `Capture` that is on (CUDA, search/train/capture.py), the first call
captures the step and every later call replays it; otherwise (the CPU, `--capture off`, a
failed capture) the step runs eagerly, exactly as written here. A NaN or infinite loss makes
the running loss sum non-finite for good: the loop checks that sum now and then, not each loss.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from search.train.capture import Capture, LossAndCorrect, release


def device_recipe(device: torch.device) -> tuple[torch.memory_format, Optional[torch.dtype]]:
    """(memory format, autocast dtype or None for fp32) of training on `device`.

    CUDA: channels_last and bf16 autocast. A CPU with native bf16 (avx512_bf16 or AMX): bf16
    autocast, 2-2.5x the fp32 speed of an MLP-Mixer on this project's machine and faster for
    ResNet18 too, while channels_last was slower on the CPU for both (bench/README.md).
    Other CPUs: fp32. Every recipe is deterministic on the CPU.
    """
    if device.type == "cuda":
        return torch.channels_last, torch.bfloat16
    return torch.contiguous_format, (torch.bfloat16 if cpu_has_native_bf16() else None)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs whose flags (Linux /proc/cpuinfo) name bf16 instructions. Elsewhere bf16
    would be emulated (not measured here), so the CPU trains in fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _static_batch(shape: tuple[int, ...], device: torch.device,
                  memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.zeros(shape, device=device).contiguous(memory_format=memory_format)
    return images, torch.zeros(shape[0], dtype=torch.int64, device=device)


class TrainStep:
    """Forward, loss, backward and optimizer step for one batch of `batch_shape`.

    `autocast` is the reduced-precision dtype (bf16 on CUDA) or None for plain fp32.
    Label smoothing applies to the training loss it minimises (and reports) only.
    With a `capture`, forward and backward are captured at the first call and replayed after
    it; the optimizer step runs outside the graphs (fused on CUDA), so it reads the learning
    rate the schedule set.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 batch_shape: tuple[int, ...], device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 autocast: torch.dtype | None = None, label_smoothing: float = 0.0,
                 capture: Capture | None = None):
        self.model, self.optimizer = model, optimizer
        self.autocast, self.label_smoothing = autocast, label_smoothing
        self.images, self.labels = _static_batch(batch_shape, device, memory_format)
        self.batch_size = batch_shape[0]
        self.loss_sum = torch.zeros((), device=device)                       # sum over images
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.forward = LossAndCorrect(model, autocast, label_smoothing)  # eager, or captured:
        self.capture, self.graphed, self.tried = capture, None, False     # the same function

    def load(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Copy one batch into the static tensors the step reads."""
        self.images.copy_(images)
        self.labels.copy_(labels)

    def __call__(self) -> None:
        if not self.tried and self.capture is not None:
            self.tried = True    # once per trial: replayed every later step of every epoch
            self.graphed = self.capture.train_graph(self.model, self.images, self.labels,
                                                    self.autocast, self.label_smoothing)
        forward = self.graphed if self.graphed is not None else self.forward
        loss, correct = forward(self.images, self.labels)  # captured: replays fwd, then bwd
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach().float() * self.batch_size
        self.correct += correct

    def reset(self) -> None:
        """Zero the running sums (a new epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def release(self) -> None:
        """Drop the graphs (and their memory pool) now, not at the next garbage collection;
        the gradients, which may live in that pool, go too."""
        if self.graphed is not None:
            release(self.graphed)
            self.graphed = None
            self.optimizer.zero_grad(set_to_none=True)


class EvalStep:
    """Forward and summed loss/correct count for one batch, in eval mode, no gradients.

    Static tensors are kept per batch size: a split of n images has at most two shapes (full
    batches and the last, partial one), so at most two graphs to capture (with a `capture`:
    at the first call of each shape, replayed after it).
    """

    def __init__(self, model: nn.Module, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 autocast: torch.dtype | None = None, capture: Capture | None = None):
        self.model, self.autocast = model, autocast
        self.device, self.memory_format = device, memory_format
        self.batches: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.images = self.labels = None
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.capture = capture
        self.graphs: dict[tuple, torch.cuda.CUDAGraph | None] = {}   # per shape; None: eager

    def load(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        shape = tuple(images.shape)
        if shape not in self.batches:
            self.batches[shape] = _static_batch(shape, self.device, self.memory_format)
        self.images, self.labels = self.batches[shape]
        self.images.copy_(images)
        self.labels.copy_(labels)

    def __call__(self) -> None:
        shape = tuple(self.images.shape)
        if shape not in self.graphs and self.capture is not None:
            self.graphs[shape] = self.capture.eval_graph(self.forward,
                                                         [self.loss_sum, self.correct])
        graph = self.graphs.get(shape)
        if graph is not None:
            graph.replay()
        else:
            self.forward()

    @torch.no_grad()
    def forward(self) -> None:
        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None):
            logits = self.model(self.images)
        self.loss_sum += F.cross_entropy(logits.float(), self.labels, reduction="sum")
        self.correct += (logits.argmax(1) == self.labels).sum()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def release(self) -> None:
        self.graphs.clear()


def totals(loss_sum: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    """The running sums as host numbers: one read-back for both."""
    return tuple(torch.stack([loss_sum, correct.float()]).tolist())
