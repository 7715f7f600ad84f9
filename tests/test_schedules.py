"""search.train.schedules: the learning rate at given steps against each schedule's formula, a
rebuilt schedule that replays its steps continues exactly, and momentum is left alone."""
from __future__ import annotations

import math

import pytest
import torch

from search.train.schedules import WARMUP_START_FACTOR, make_scheduler, warmup_steps
from spaces import Config

LR, TOTAL = 0.1, 200


def optimizer(momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=LR,
                             betas=(momentum, 0.999))


def rates(schedule: str, total: int = TOTAL) -> list[float]:
    """The lr of each of `total` optimizer steps, stepping as the trainer does."""
    opt = optimizer()
    scheduler = make_scheduler(opt, Config(lr=LR, schedule=schedule), total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return seen


def cosine(step: int, total: int = TOTAL) -> float:
    """Linear warmup from LR * WARMUP_START_FACTOR to LR, then cosine to 0 at the end."""
    warmup = warmup_steps(total)
    if step < warmup:
        return LR * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * step / warmup)
    return LR * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def onecycle(step: int, total: int = TOTAL) -> float:
    """torch's OneCycleLR defaults: 30% up from LR/25 to LR, then down to LR/25/1e4, both
    along half a cosine."""
    def anneal(start, end, fraction):
        return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))
    peak = 0.3 * total - 1
    if step <= peak:
        return anneal(LR / 25, LR, step / peak)
    return anneal(LR, LR / 25 / 1e4, (step - peak) / (total - 1 - peak))


def test_constant_is_the_configs_lr_at_every_step():
    assert rates("constant") == [LR] * TOTAL


@pytest.mark.parametrize("schedule, formula", [("cosine", cosine), ("onecycle", onecycle)])
def test_the_lr_at_given_steps_matches_the_formula(schedule, formula):
    seen = rates(schedule)
    for step in (0, 1, 5, 9, 10, 11, 59, 60, 100, 150, 199):
        assert seen[step] == pytest.approx(formula(step), rel=1e-9, abs=1e-15), step
    assert max(seen) == pytest.approx(LR)
    assert seen[-1] < LR / 100                               # ends near 0


def test_cosine_warms_up_over_five_percent_of_the_steps():
    assert warmup_steps(TOTAL) == 10 and warmup_steps(30 * 351) == 526 and warmup_steps(3) == 1
    seen = rates("cosine")
    assert seen[0] == pytest.approx(LR * WARMUP_START_FACTOR)
    assert seen[:11] == sorted(seen[:11]) and seen[10] == pytest.approx(LR)
    assert seen[10:] == sorted(seen[10:], reverse=True)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
@pytest.mark.parametrize("done", [0, 1, 10, 77, TOTAL - 1])
def test_a_rebuilt_schedule_continues_exactly(schedule, done):
    seen = rates(schedule)
    opt = optimizer()
    scheduler = make_scheduler(opt, Config(lr=LR, schedule=schedule), TOTAL, steps_done=done)
    resumed = []
    for _ in range(done, TOTAL):
        resumed.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert resumed == seen[done:]          # equal floats, not approximately


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_momentum_is_the_configs_at_every_step(schedule):
    opt = optimizer(momentum=0.7)
    scheduler = make_scheduler(opt, Config(lr=LR, schedule=schedule), TOTAL)
    for _ in range(TOTAL):
        assert opt.param_groups[0]["betas"] == (0.7, 0.999)
        opt.step()
        scheduler.step()


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
@pytest.mark.parametrize("total", [1, 2, 3])
def test_tiny_runs_have_a_schedule_too(schedule, total):
    seen = rates(schedule, total)
    assert len(seen) == total and all(0 < lr <= LR for lr in seen)
