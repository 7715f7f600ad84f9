"""What checkpoints cost the training loop: seconds per epoch without them, with a save every
60 s, after every epoch (asynchronous, as the trainer does), and after every epoch waiting for
the write (what the trainer did before: copy, serialise and write inside the loop).

Each epoch is timed from one epoch's end to the next (training, validation and whatever the
checkpoint takes in the loop); the first epoch (warm-up) is left out. The variants alternate
within each round, in one process, from the same initial weights, so the ratios compare like
with like on a machine whose load drifts. Also printed: the bytes per save (main file, best
file) and the seconds a save spends in the loop (the copy) and in the background (the write).

    python bench/checkpoint_cost.py                                # CPU: mlpmixer c=128
    python bench/checkpoint_cost.py --model resnet18 --images 256 --epochs 4 --set optimizer=adam
    python bench/checkpoint_cost.py --model resnet18 --images 50000 --device cuda   # a GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import search.train.checkpoint
from search.train.checkpoint import Checkpoint
from search.train.data import Dataset, synthetic
from search.train.models import build, parameter_count
from search.train.trainer import pick_device, train
from spaces import Config, apply_overrides, parse_value
from spaces.defaults import parse_assignment

VARIANTS = ("none", "every 60 s", "every epoch", "every epoch, blocking (before)")


class Timed:
    """Seconds spent in Checkpoint.save (the loop's share) and in the writes (background)."""

    def __init__(self):
        self.save, self.write, self.sizes = [], [], {}    # (wall, this thread's CPU) seconds
        self.real_save, self.real_write = Checkpoint.save, search.train.checkpoint._atomic_save

    def install(self):
        timed = self

        def save(checkpoint, *args, **kwargs):
            started = time.perf_counter(), time.thread_time()
            try:
                return timed.real_save(checkpoint, *args, **kwargs)
            finally:
                timed.save.append((time.perf_counter() - started[0],
                                   time.thread_time() - started[1]))

        def write(blob, path):
            started = time.perf_counter(), time.thread_time()
            timed.real_write(blob, path)
            timed.write.append((time.perf_counter() - started[0],
                                time.thread_time() - started[1]))
            timed.sizes["best" if ".best" in path.name else "main"] = path.stat().st_size
        Checkpoint.save, search.train.checkpoint._atomic_save = save, write


def run(variant: str, model, config: Config, data: Dataset, device, folder: Path) -> list[float]:
    """Seconds from each epoch's end to the next one's, warm-up epoch left out."""
    checkpoint = None
    if variant != "none":
        every = 60 if variant == "every 60 s" else 0
        checkpoint = Checkpoint(folder / "trial.pt", every_seconds=every, identity={})
    ends = [time.perf_counter()]

    def on_epoch(result):
        if variant.endswith("(before)"):
            checkpoint.flush()       # the loop waits for the write, as a synchronous save did
        ends.append(time.perf_counter())
    train(model, config, data, device=device, on_epoch=on_epoch, checkpoint=checkpoint)
    if checkpoint is not None:
        checkpoint.remove()
    return [b - a for a, b in zip(ends[1:], ends[2:])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mlpmixer", choices=("resnet18", "mlpmixer", "mlp"))
    p.add_argument("--images", type=int, default=512, help="training images (512)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run, the first warm-up")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dir", help="where checkpoints go (default: a temporary folder here)")
    args = p.parse_args(argv)
    if args.epochs < 3:
        p.error("--epochs must be at least 3 (the first is warm-up)")
    fixed = {"batch_size": 128, "epochs": args.epochs}
    if args.model == "mlpmixer":
        fixed["embed_dim"] = 128
    for text in args.set:
        key, value = parse_assignment(text)
        fixed[key] = parse_value(key, value)
    config = apply_overrides(Config(), fixed)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_images, test_images, _ = synthetic(n_train=args.images, n_test=256)
    data = Dataset(train_images, test_images, test_images, [str(i) for i in range(10)],
                   "synthetic").to(device)
    torch.manual_seed(0)
    print(f"{args.model} ({parameter_count(build(args.model, config)):,} parameters, "
          f"{config.optimizer}), {args.images} images, batch {config.batch_size}, "
          f"{args.epochs} epochs x {args.rounds} rounds on {device} "
          f"({os.cpu_count()} cores, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}); torch {torch.__version__}")

    timed = Timed()
    timed.install()
    seconds = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(dir=args.dir or ".", prefix=".checkpoint-bench-") as folder:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                torch.manual_seed(0)
                seconds[variant] += run(variant, build(args.model, config), config, data,
                                        device, Path(folder))
    none = statistics.median(seconds["none"])
    print("\n| checkpoint | s/epoch (median) | ratio to none |\n|---|---:|---:|")
    for variant, values in seconds.items():
        value = statistics.median(values)
        print(f"| {variant} | {value:.3f} | {value / none:.3f} |")
    if timed.save:
        def ms(pairs, which):
            return statistics.median(pair[which] for pair in pairs) * 1e3
        print(f"\nper save: main file {timed.sizes.get('main', 0) / 1e6:.1f} MB, best file "
              f"{timed.sizes.get('best', 0) / 1e6:.1f} MB (written only when the best epoch "
              f"changes); in the loop (copy) {ms(timed.save, 0):.1f} ms wall, "
              f"{ms(timed.save, 1):.1f} ms CPU; in the background (serialise + write, per "
              f"file) {ms(timed.write, 0):.1f} ms wall, {ms(timed.write, 1):.1f} ms CPU "
              f"(medians; {len(timed.write)} files written)")
    for variant, values in seconds.items():
        print(f"{variant}: {[round(v, 3) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
