"""Learning-rate schedules, stepped once per training batch: torch's schedulers, from a Config.

`config.lr` is the peak learning rate of every schedule:
- constant: lr at every step (the report's training): LambdaLR with factor 1;
- cosine: linear warmup from lr * WARMUP_START_FACTOR to lr over the first WARMUP_FRACTION of
  the run's steps (LinearLR), then cosine annealing to 0 at the last step (CosineAnnealingLR),
  chained by SequentialLR;
- onecycle: OneCycleLR with torch's defaults (30% of the steps rising from lr/25 to lr, then
  down to lr/25/1e4, both along a cosine); it leaves momentum alone (cycle_momentum=False),
  since momentum (beta1) is a searched parameter.

A schedule depends only on the config, the run's total number of steps and the number of steps
taken, so a resumed run builds it afresh from the current config and replays the steps already
taken: it continues exactly, and never with a saved learning rate of another configuration.
"""
from __future__ import annotations

import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler,
                                      OneCycleLR, SequentialLR)

from spaces import Config

# Warmup of the cosine schedule, in optimizer steps (batches): 5% of the run, i.e. 1.5 epochs
# of 30, starting at 1% of the peak rate (the linear warmup of the fast CIFAR recipes).
WARMUP_FRACTION = 0.05
WARMUP_START_FACTOR = 0.01


def warmup_steps(total_steps: int) -> int:
    """Optimizer steps of the cosine schedule's linear warmup (at least one)."""
    return max(1, round(WARMUP_FRACTION * total_steps))


def make_scheduler(optimizer: Optimizer, config: Config, total_steps: int,
                   steps_done: int = 0) -> LRScheduler:
    """The config's schedule over `total_steps` optimizer steps, already `steps_done` steps in
    (a resumed run): call its step() after every optimizer.step()."""
    if config.schedule == "constant":
        scheduler: LRScheduler = LambdaLR(optimizer, lambda step: 1.0)
    elif config.schedule == "cosine":
        warmup = warmup_steps(total_steps)
        scheduler = SequentialLR(optimizer, [
            LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0,
                     total_iters=warmup),
            CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup), eta_min=0.0),
        ], milestones=[warmup])
    elif config.schedule == "onecycle":
        scheduler = OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(1, total_steps),
                               cycle_momentum=False)
    else:  # spaces.defaults.check refuses other names before a Config exists
        raise ValueError(f"unknown schedule {config.schedule!r}")
    with warnings.catch_warnings():
        # Replaying steps without optimizer steps in between is the point here; torch warns
        # about that order because in a training loop it would skip the first value.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps_done):
            scheduler.step()
    return scheduler
