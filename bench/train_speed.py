"""Seconds per epoch and images per second: our trainer against the common recipe.

Ours: search.train.trainer.train with the whole split on the device, crop and flip done there on
the batch, no DataLoader (bf16 autocast + channels_last on CUDA, fp32 on the CPU).
The common recipe: a CIFAR10-style torch Dataset returning PIL images, torchvision transforms
(RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader with
workers, fp32, a plain loop that reads the loss back every step (loss.item()), as the PyTorch
CIFAR-10 tutorial does.

Both train the same model (same initial weights), at the same batch size, on the same images,
in the same process; each epoch is timed from its first batch to its last optimizer step
(validation excluded). The first epoch is warm-up (cudnn autotuning, worker start-up, caches):
the table reports the mean of the later ones (the median over --rounds).

`--ours` runs our trainer in other recipes as well, for the CPU path: fp32 (the trainer's CPU
default), channels_last, bf16 (autocast; native on CPUs with avx512_bf16 or AMX), or both.

    python bench/train_speed.py                                   # CPU: mlpmixer (c=128)
    python bench/train_speed.py --model resnet18 --images 1024 --batch-size 128
    python bench/train_speed.py --ours fp32,channels_last,bf16,bf16+channels_last --rounds 3
    python bench/train_speed.py --ours fp32@1,fp32@2,bf16@1,bf16@2 --rounds 3
    python bench/train_speed.py --model resnet18 --data ../shared/data/cifar10-jpeg.tar.gz \\
        --images 50000 --epochs 3 --device cuda --workers 8
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Run from a checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search.train.trainer
from search.train.data import Dataset, DataError, Images, balanced_subset, channel_stats, load_source
from search.train.models import build, parameter_count
from search.train.trainer import pick_device, train
from spaces import Config, ConfigError, apply_overrides, parse_value
from spaces.defaults import parse_assignment

EVAL_IMAGES = 256   # ours evaluates a validation set each epoch (untimed); keep it small
# Our trainer's recipes (memory format, autocast dtype); "default" is what it does by itself.
RECIPES = {"fp32": (torch.contiguous_format, None),
           "channels_last": (torch.channels_last, None),
           "bf16": (torch.contiguous_format, torch.bfloat16),
           "bf16+channels_last": (torch.channels_last, torch.bfloat16)}


# ---------------------------------------------------------------- the data, shared by both

def load_images(source: str, n: int, seed: int, n_eval: int = EVAL_IMAGES
                ) -> tuple[Images, Images]:
    """n class-balanced training images (uint8, N x 3 x 32 x 32) and n_eval held-out ones
    (test images, at most as many as there are)."""
    if source == "synthetic":
        from search.train.data import synthetic
        train, test, _ = synthetic(n_train=max(n, 10), n_test=n_eval, seed=seed)
    else:
        train, test, _ = load_source(source)
    generator = torch.Generator().manual_seed(seed)
    if n > len(train):
        raise DataError(f"--images {n}: {source} has only {len(train)} training images")
    train = train.take(balanced_subset(train.y, n, generator))
    test = test.take(balanced_subset(test.y, min(n_eval, len(test)), generator))
    return train, test


# ---------------------------------------------------------------- the common recipe

class CIFAR10Style(torch.utils.data.Dataset):
    """Like torchvision.datasets.CIFAR10: HWC uint8 array in memory, a PIL image per item."""

    def __init__(self, images: Images, transform):
        self.data = images.x.permute(0, 2, 3, 1).contiguous().numpy()   # N x 32 x 32 x 3
        self.targets = images.y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def common_recipe(model, config: Config, images: Images, device: torch.device, workers: int,
                  epochs: int, seed: int) -> list[float]:
    """Seconds per epoch of the textbook loop (fp32, DataLoader with PIL transforms)."""
    from torchvision import transforms
    # As the tutorials run it: cudnn without autotuning. Our trainer turns autotuning on for
    # the process, so it is turned off again here and every common round is alike.
    torch.backends.cudnn.benchmark = False
    mean, std = channel_stats(images)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize((mean / 255).tolist(), (std / 255).tolist())])
    loader = torch.utils.data.DataLoader(
        CIFAR10Style(images, transform), batch_size=config.batch_size, shuffle=True,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  betas=(config.momentum, 0.999),
                                  weight_decay=config.weight_decay)
    seconds = []
    for _ in range(epochs):
        started, running_loss = time.perf_counter(), 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        seconds.append(time.perf_counter() - started)
    return seconds


# ---------------------------------------------------------------- ours

def our_trainer(model, config: Config, train_images: Images, eval_images: Images,
                device: torch.device, epochs: int, seed: int, recipe: str = "default",
                capture: str = "auto") -> list[float]:
    """Seconds per epoch of search.train.trainer.train (its own train_seconds, validation excluded)."""
    result = our_run(model, config, train_images, eval_images, device, epochs, seed, recipe,
                     capture)
    return [e.train_seconds for e in result.epochs]


def our_run(model, config: Config, train_images: Images, eval_images: Images,
            device: torch.device, epochs: int, seed: int, recipe: str = "default",
            capture: str = "auto", on_epoch=None):
    """search.train.trainer.train on these images (the eval images validate each epoch and test at
    the end); its TrainResult. `capture`: CUDA graphs, auto (on CUDA) or off."""
    data = Dataset(train_images, eval_images, eval_images, [str(c) for c in range(10)],
                   "bench").to(device)   # loaded onto the device once, as a study does
    default, threads = search.train.trainer.device_recipe, torch.get_num_threads()
    recipe, _, run_threads = recipe.partition("@")    # "bf16@1": bf16 on one thread
    if recipe != "default":
        search.train.trainer.device_recipe = lambda device: RECIPES[recipe]
    torch.set_num_threads(int(run_threads or threads))
    try:
        return train(model, config.replace(epochs=epochs), data, device=device, seed=seed,
                     capture=capture, on_epoch=on_epoch)
    finally:
        search.train.trainer.device_recipe = default
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- the run

def steady(seconds: list[float]) -> float:
    """Mean seconds per epoch after the warm-up epoch (the only epoch if there is one)."""
    return statistics.mean(seconds[1:] if len(seconds) > 1 else seconds)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n\n", 3)[3],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlpmixer", choices=("resnet18", "mlpmixer", "mlp"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=512, help="training images per epoch (512)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per recipe; the first is "
                   "warm-up (default 2)")
    p.add_argument("--data", default="synthetic",
                   help="synthetic (default), a folder / .tar.gz in image-folder layout, cifar10")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers of the common recipe (default min(4, cores))")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model settings, e.g. --set embed_dim=128 (mlpmixer default here: 128)")
    p.add_argument("--threads", type=int, help="torch CPU threads for both recipes (default: "
                   "torch's choice; 1 is steadier on a busy machine with few cores)")
    p.add_argument("--rounds", type=int, default=1, help="alternate the recipes this many "
                   "times and report the median (default 1)")
    p.add_argument("--ours", default="default",
                   help="our trainer's recipes to time, comma-separated: default (what the "
                   f"trainer picks for the device), {', '.join(RECIPES)}; RECIPE@N runs it "
                   "on N torch threads")
    p.add_argument("--capture", default="auto", choices=("auto", "off"),
                   help="our trainer's CUDA graphs: auto (on CUDA) or off (default auto)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _known_recipe(text: str) -> bool:
    recipe, at, threads = text.partition("@")
    return (recipe == "default" or recipe in RECIPES) and (not at or threads.isdigit()
                                                           and int(threads) > 0)


def make_config(args) -> Config:
    fixed = {"batch_size": args.batch_size}
    if args.model == "mlpmixer":
        fixed["embed_dim"] = 128   # a quarter of the c=256 FLOPs: CPU-sized by default
    for text in args.set:
        key, value = parse_assignment(text)
        fixed[key] = parse_value(key, value)
    return apply_overrides(Config(), fixed)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = make_config(args)
        if args.images < config.batch_size or args.epochs < 1 or args.rounds < 1:
            raise ConfigError("--images must be at least --batch-size; --epochs and --rounds "
                              "at least 1")
        recipes = args.ours.split(",")
        unknown = [r for r in recipes if not _known_recipe(r)]
        if unknown:
            raise ConfigError(f"--ours {','.join(unknown)}: choose from default, "
                              f"{', '.join(RECIPES)}")
        device = pick_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        train_images, eval_images = load_images(args.data, args.images, args.seed)
    except (ConfigError, DataError, RuntimeError) as error:
        print(f"train_speed: error: {error}", file=sys.stderr)
        return 2

    per_epoch = (args.images // config.batch_size) * config.batch_size  # both drop the rest
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                 f"load average {os.getloadavg()[0]:.1f} before the run)")
    torch.manual_seed(args.seed)
    params = parameter_count(build(args.model, config))
    print(f"{args.model} ({params:,} parameters), batch {config.batch_size}, {per_epoch} images "
          f"per epoch from {args.data}, {args.epochs} epochs (first = warm-up); {name}; "
          f"torch {torch.__version__}, Python {platform.python_version()}")

    # Rounds alternate the recipes (common, ours, common, ours, ...) so that a busy machine's
    # drifting load falls on all alike; each run starts from the same initial weights.
    common_runs, our_runs = [], {recipe: [] for recipe in recipes}
    for _ in range(args.rounds):
        torch.manual_seed(args.seed)
        common_runs.append(common_recipe(build(args.model, config), config, train_images,
                                         device, args.workers, args.epochs, args.seed))
        for recipe in recipes:
            torch.manual_seed(args.seed)
            our_runs[recipe].append(our_trainer(build(args.model, config), config, train_images,
                                                eval_images, device, args.epochs, args.seed,
                                                recipe, args.capture))
    common = statistics.median(steady(run) for run in common_runs)
    default = ("bf16, channels_last" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        default += ", CUDA graphs" if args.capture == "auto" else ", eager"
    rows = [(f"common recipe (DataLoader, {args.workers} workers, PIL, fp32)", common)]
    for recipe, runs in our_runs.items():
        rows.append((f"ours (data on device, {default if recipe == 'default' else recipe})",
                     statistics.median(steady(run) for run in runs)))
    width = max(len(r) for r, _ in rows)
    print(f"\n| {'recipe':<{width}} | s/epoch | img/s | ratio ours/common |")
    print(f"|{'-' * (width + 2)}|--------:|------:|------------------:|")
    for recipe, seconds in rows:
        ratio = common / seconds   # >1: ours is faster (img/s ours / img/s common)
        print(f"| {recipe:<{width}} | {seconds:7.3f} | {per_epoch / seconds:5.0f} | "
              f"{ratio:17.2f} |")
    print()
    for i, c in enumerate(common_runs):
        ours = "; ".join(f"{recipe} {[round(s, 3) for s in runs[i]]}"
                         for recipe, runs in our_runs.items())
        print(f"round {i + 1} seconds per epoch: common {[round(s, 3) for s in c]}; {ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
