"""The facts a study's summaries state, computed from the storage alone: the model's size, the
wall time the study took, the mean time of an epoch. The report's header (reports/page.py
header_lines) and the dashboard's study note (reports/study_note.py) say them alike.
"""
from __future__ import annotations

import datetime
from typing import Iterable

from optuna.trial import FrozenTrial, TrialState

from reports.table import REPEAT_ATTR
from reports.trial_data import trial_curves, trial_value


def trained(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that trained (any state but a repeat, which trained nothing)."""
    return [t for t in trials if REPEAT_ATTR not in t.user_attrs]


def parameters_text(trials: Iterable[FrozenTrial]) -> str | None:
    """'1,707,274 parameters', or 'from 530,122 to 2,175,818 parameters' when the searched
    architecture changes the size; None when no trial recorded it."""
    counts = sorted({int(n) for t in trials
                     if (n := trial_value(t, "parameters")) is not None})
    if not counts:
        return None
    if len(counts) == 1:
        return f"{counts[0]:,} parameters"
    return f"from {counts[0]:,} to {counts[-1]:,} parameters"


def busy_seconds(trials: Iterable[FrozenTrial]) -> float:
    """Wall time with at least one trial running, in seconds: the union of the trials'
    start-to-end intervals, so trials run side by side count once and the pause between a
    study's runs (stopped today, resumed tomorrow) not at all. A running trial counts to now."""
    now = datetime.datetime.now()
    spans = sorted((t.datetime_start, t.datetime_complete or now) for t in trials
                   if t.datetime_start is not None
                   and (t.datetime_complete or t.state == TrialState.RUNNING))
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def epoch_seconds(trials: Iterable[FrozenTrial]) -> tuple[float, int] | None:
    """(mean seconds of an epoch, training and validation, over every epoch trained; the
    number of epochs), or None before the first epoch."""
    seconds, epochs = 0.0, 0
    for trial in trained(trials):
        curves = trial_curves(trial)
        train, val = curves.get("train_seconds") or [], curves.get("val_seconds") or []
        for t, v in zip(train, val):
            seconds += t + v
            epochs += 1
    return (seconds / epochs, epochs) if epochs else None


def shared_by(trials: Iterable[FrozenTrial]) -> int:
    """The most trials that shared a device while timed (--workers on one GPU): 1 alone."""
    return max((int(trial_value(t, "timing_shared_by", 1) or 1) for t in trials), default=1)


def duration_text(seconds: float) -> str:
    """'48 s', '3 min 25 s', '2 h 05 min', '3.2 days'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"
    return f"{seconds / 86400:.1f} days"


def time_text(trials: list[FrozenTrial]) -> str | None:
    """'3 min 25 s of wall time with a trial running; 6.1 s per epoch on average (training
    and validation, 44 epochs)', or None before any trial ran."""
    busy = busy_seconds(trials)
    if not busy:
        return None
    text = f"{duration_text(busy)} of wall time with a trial running"
    per_epoch = epoch_seconds(trials)
    if per_epoch:
        mean, epochs = per_epoch
        shared = shared_by(trials)
        sharing = f", up to {shared} trials sharing a device" if shared > 1 else ""
        text += (f"; {mean:.3g} s per epoch on average (training and validation, over "
                 f"{epochs:,} epochs{sharing})")
    return text
