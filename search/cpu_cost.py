"""What a search costs on a CPU, said before its first trial: a search without a GPU may take
weeks, and a person should know that in its first lines, not from an ETA an hour later.

The projection scales seconds per 1,000 training images measured on this project's 2-core
CPU (README.md, bench/README.md: real CIFAR-10 at batch 128, machine shared with other jobs)
by the images and the threads of this run; the live ETA, from the run's own steps, replaces
it as soon as training starts.
"""
from __future__ import annotations

from search.terminal import duration
from search.settings import StudySpec

# Seconds per 1,000 training images, one epoch, 2 threads (validation images cost a third:
# forward only). ResNet18: ~20 min per 45,000-image epoch; MLP-Mixer by patch size: 4 ~7 min,
# 8 ~130 s, 16 ~90-180 s; the MLP: 15-35 s at batch 128 on a loaded machine, 0.6-1 s per
# 5,000 at batch 256 (the quick look's trials at load 5).
MEASURED_THREADS = 2
SECONDS_PER_1000 = {"resnet18": 27.0, "mlp": 0.3}
MIXER_SECONDS_PER_1000 = {2: 40.0, 4: 9.3, 8: 2.9, 16: 2.5, 32: 2.5}
TRIAL_SECONDS = 2.0   # a trial's own cost besides its epochs: the test, pictures, storage
MAX_SPEEDUP = 8        # more threads than this help less than in proportion: claim no more
QUICK_LOOK_ABOVE = 15 * 60   # seconds in all past which the line points to the quick look


def epoch_seconds(spec: StudySpec, train_images: int, val_images: int, threads: int) -> float:
    """One epoch of one trial of `spec` on this CPU, projected (seconds)."""
    if spec.model == "mlpmixer":
        per_1000 = MIXER_SECONDS_PER_1000.get(int(spec.fixed.get("patch_size", 4)), 9.3)
    else:
        per_1000 = SECONDS_PER_1000.get(spec.model, SECONDS_PER_1000["resnet18"])
    speedup = min(max(threads, 1), MAX_SPEEDUP) / MEASURED_THREADS
    return (train_images + val_images / 3) / 1000 * per_1000 / speedup


def cpu_line(spec: StudySpec, trials_left: int, train_images: int, val_images: int,
             threads: int, workers: int = 1) -> str:
    """'on the CPU: ~21 min an epoch, up to 13 days in all; see README's quick look': the
    device, the projected time per epoch of one trial and in all (pruning cuts the latter).
    `workers` processes share the `threads`: each trial's epoch is that many times slower,
    the study no faster (the cores are the limit)."""
    machine_epoch = epoch_seconds(spec, train_images, val_images, threads)
    per_epoch = machine_epoch * max(workers, 1)
    total = (machine_epoch * spec.epochs + TRIAL_SECONDS) * max(trials_left, 0)
    line = f"on the CPU: ~{_about(per_epoch)} an epoch"
    if total:
        line += f", up to {_about(total)} in all"
    if total > QUICK_LOOK_ABOVE:
        line += "; see README's quick look"
    return line


def _about(seconds: float) -> str:
    """A projection's precision: '2 s', '40 s', '3 min', '5.0 h', '12 days'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 24 * 3600:
        return f"{seconds / 3600:.1f} h"
    return duration(seconds)
