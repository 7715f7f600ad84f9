"""The GPU check of issue 14 in one go: every figure, one table.

Sections, in this order, each started only while the --budget (seconds) lasts:
  checks  capture correctness on CUDA (bench/capture_checks.py; skipped without CUDA)
  speed   our trainer, CUDA graphs and eager, against the common recipe (bench/train_speed.py)
          in this process: ResNet18 at batch 64 / 128 / 512, MLP-Mixer patch 4 at 128. The
          batch-128 ResNet18 runs train 10 epochs: captured against eager accuracy, same seed
  shared  4 processes, each training a captured ResNet18 at batch 128: aggregate images/s
  search  `optuna-search resnet18 --trials 30 --epochs 30 --workers 4` on the data, stopped
          (Ctrl-C) when the budget ends; the table projects the whole search from it
It prints one Markdown table (device, torch, commit above it) and, with $OUT set, writes
$OUT/gpu_check.md and $OUT/gpu_check.json after every section (a run cut short keeps what it
measured), and the search's study and log.

    python3 bench/gpu_check.py --commit abc1234                   # the GPU machine
    python bench/gpu_check.py --tiny --device cpu --capture off   # a smoke test on a CPU
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import platform
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))       # train_speed, capture_checks
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the checkout

from gpu_table import (Row, accuracy_row, checks_row, plan_for, search_row, shared_row,
                       speed_row, table)
from search.train.gpu_share import cap_memory
from search.train.models import build
from search.train.trainer import pick_device
from spaces import Config, apply_overrides
from train_speed import common_recipe, load_images, our_run, steady

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("checks", "speed", "shared", "search")
SEARCH_MIN_SECONDS = 60     # less than this left: the search is skipped
STOP_SECONDS = 90           # after Ctrl-C, how long the search gets to queue its trials


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=".gpu-carry/cifar10-jpeg.tar.gz",
                   help="the CIFAR-10 archive (default: where ../shared/gpu/stage puts it), "
                        "or synthetic")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--capture", default="auto", choices=("auto", "off"),
                   help="the 'captured' runs' setting (off: eager too, for a CPU smoke test)")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds for everything; the search gets what is left (default 420)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"which to run, comma-separated (default {','.join(SECTIONS)})")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes (a few dozen images, an MLP search): minutes on a CPU")
    p.add_argument("--commit", default=None, help="the commit measured (default: git's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--search-args", default="", metavar="ARGS",
                   help="more arguments for the search section's command, e.g. '--space wide'")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    return args


class Report:
    """The numbers so far, written to $OUT after every section."""

    def __init__(self, args, device: torch.device, plan: dict):
        self.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        self.head = {
            "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else f"CPU ({os.cpu_count()} cores)"),
            "torch": torch.__version__, "python": platform.python_version(),
            "commit": args.commit or _git_commit(), "tiny": args.tiny, "capture": args.capture,
            "budget_s": args.budget, "data": args.data, "plan": plan}
        self.sections: dict[str, object] = {}
        self.rows: list[Row] = []

    def add(self, section: str, numbers, rows: list[Row]) -> None:
        self.sections[section] = numbers
        self.rows += rows
        self.write()

    def text(self) -> str:
        head = self.head
        return (f"GPU check: {head['device']}, torch {head['torch']}, commit {head['commit']}"
                f"{' (TINY sizes: a smoke test, not a measurement)' if head['tiny'] else ''}"
                f"\n\n{table(self.rows)}\n")

    def write(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.md").write_text(self.text())
        blob = {**self.head, "sections": self.sections,
                "rows": [row.__dict__ for row in self.rows]}
        (self.out / "gpu_check.json").write_text(json.dumps(blob, indent=1, default=str))


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- sections

def run_checks(report: Report, device: torch.device) -> None:
    if device.type != "cuda":
        report.add("checks", "skipped: no CUDA", [checks_row(None)])
        return
    from capture_checks import run_all
    checks = run_all()
    _free()
    report.add("checks", [c.__dict__ for c in checks], [checks_row(checks)])


def run_speed(report: Report, plan: dict, device: torch.device, args, deadline: float) -> None:
    train_images, eval_images = load_images(args.data, plan["images"], args.seed,
                                            plan["eval_images"])
    numbers = []
    for spec in plan["rows"]:
        if time.monotonic() > deadline:
            numbers.append({**spec, "skipped": "budget"})
            report.add("speed", numbers, [Row(spec["label"], "not run: the budget was over",
                                              "", "not run")])
            continue
        config = apply_overrides(Config(), {"batch_size": spec["batch"], **spec["set"]})
        measured = {**spec}

        def model():
            torch.manual_seed(args.seed)   # the same initial weights for every recipe
            return build(spec["model"], config)

        measured["common"] = common_recipe(model(), config, train_images, device,
                                           plan["common_workers"], plan["epochs"], args.seed)
        _free()
        epochs = plan["accuracy_epochs"] if spec.get("accuracy") else plan["epochs"]
        for name, capture in (("captured", args.capture), ("eager", "off")):
            result = our_run(model(), config, train_images, eval_images, device, epochs,
                             args.seed, capture=capture)
            measured[name] = [e.train_seconds for e in result.epochs]
            measured[f"{name}_capture_s"] = result.capture_seconds
            measured[f"{name}_capture_failure"] = result.capture_failure
            measured[f"{name}_val_acc"] = [e.val_acc for e in result.epochs]
            del result
            _free()
        for name in ("common", "captured", "eager"):
            measured[f"{name}_steady"] = steady(measured[name])
        numbers.append(measured)
        rows = [speed_row(measured, plan["tiny"])]
        if spec.get("accuracy"):
            rows.append(accuracy_row(measured, plan["tiny"]))
        report.add("speed", numbers, rows)


def run_shared(report: Report, plan: dict, args) -> None:
    """plan['shared_processes'] processes train at once; each waits for the others after its
    warm-up epoch, so the steady epochs overlap. Aggregate: their steady images over the
    wall time from the first release (the barrier lets all go at once) to the last finish
    (gpu_table.shared_images_per_second)."""
    n = plan["shared_processes"]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(n), context.Queue()
    job = {key: plan[key] for key in ("images", "shared_eval_images", "shared_batch",
                                      "shared_epochs", "shared_model")}
    job.update(data=args.data, device=args.device, capture=args.capture, seed=args.seed, n=n)
    processes = [context.Process(target=shared_worker, args=(i, job, barrier, results))
                 for i in range(n)]
    for process in processes:
        process.start()
    outcomes = []
    while len(outcomes) < n:
        try:
            outcomes.append(results.get(timeout=1))
        except queue.Empty:
            if not any(p.is_alive() for p in processes):   # one died without a word
                with contextlib.suppress(queue.Empty):
                    while len(outcomes) < n:
                        outcomes.append(results.get(timeout=1))
                break
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    numbers = {"processes": n, "capture": args.capture, "outcomes": outcomes}
    report.add("shared", numbers, [shared_row(numbers, plan)])


def shared_worker(index: int, job: dict, barrier, results) -> None:
    """One of the processes sharing the device (spawned: imports, data, capture of its own)."""
    try:
        device = pick_device(job["device"])
        fraction = cap_memory(device, job["n"])   # as --workers gives each process
        if device.type == "cpu":                  # share the cores, as --workers does
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // job["n"]))
        train_images, eval_images = load_images(job["data"], job["images"], job["seed"],
                                                job["shared_eval_images"])
        config = Config(batch_size=job["shared_batch"])
        marks: dict[str, float] = {}

        def on_epoch(result) -> bool:
            if len(result.epochs) == 1:        # after the warm-up epoch (capture, autotuning)
                barrier.wait(timeout=300)
                marks["start"] = time.time()
            marks["end"] = time.time()
            return False

        torch.manual_seed(job["seed"] + index)
        result = our_run(build(job["shared_model"], config), config, train_images,
                         eval_images, device, job["shared_epochs"], job["seed"] + index,
                         capture=job["capture"], on_epoch=on_epoch)
        per_epoch = (len(train_images) // config.batch_size) * config.batch_size
        results.put({"index": index, "fraction": fraction, **marks,
                     "steady_images": per_epoch * (len(result.epochs) - 1),
                     "seconds": [e.train_seconds for e in result.epochs],
                     "capture_s": result.capture_seconds,
                     "capture_failure": result.capture_failure})
    except BaseException as error:
        barrier.abort()
        results.put({"index": index, "error": f"{type(error).__name__}: {error}"[:300]})


def run_search(report: Report, plan: dict, args, seconds: float) -> None:
    """The search as a user runs it, stopped with Ctrl-C when `seconds` are over."""
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-search-"))
    db = folder / "search.db"
    command = [sys.executable, "-m", "search.cli", *plan["search"], "--data", args.data,
               "--storage", f"sqlite:///{db}", "--device", args.device,
               "--capture", args.capture]
    log = folder / "search.log"
    started = time.time()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            code = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(2)          # Ctrl-C: trials failed and queued, exit 130
            try:
                code = process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
    wall = time.time() - started
    numbers = {"command": " ".join(command), "exit": code, "wall_s": wall, "budget_s": seconds,
               **summarise_study(db, plan["search"][0], started)}
    if report.out is not None:
        report.out.mkdir(parents=True, exist_ok=True)
        for path in (db, log):
            if path.exists():
                shutil.copy(path, report.out / path.name)
    shutil.rmtree(folder, ignore_errors=True)
    report.add("search", numbers, [search_row(numbers, plan)])


def summarise_study(db: Path, study: str, started: float) -> dict:
    """What the search did, read from its study: trials by state, epochs trained, the best
    test accuracy, and when the first trial started (seconds after launch)."""
    if not db.exists():
        return {"error": "no study was written"}
    import optuna
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{db}").trials
    states = [t.state.name for t in trials]
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    tests = [t.user_attrs["test_acc"] for t in trials if "test_acc" in t.user_attrs]
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    return {"trials": len(trials), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "finished_epochs": [len(t.intermediate_values) for t in finished],
            "epochs_trained": sum(len(t.intermediate_values) for t in trials),
            "best_val_acc": max((t.value for t in trials if t.value is not None), default=None),
            "best_test_acc": max(tests, default=None),
            "first_trial_after_s": min(starts) - started if starts else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    begun = time.monotonic()
    deadline = begun + args.budget
    device = pick_device(args.device)
    plan = plan_for(args.tiny)
    plan = {**plan, "search": plan["search"] + shlex.split(args.search_args)}
    sections = args.sections.split(",")
    report = Report(args, device, plan)
    print(f"gpu_check: {report.head['device']}, torch {torch.__version__}, sections "
          f"{','.join(sections)}, budget {args.budget:g} s", flush=True)
    if "checks" in sections:
        run_checks(report, device)
    if "speed" in sections:
        run_speed(report, plan, device, args, deadline)
    if "shared" in sections and time.monotonic() < deadline:
        run_shared(report, plan, args)
    if "search" in sections:
        left = deadline - time.monotonic()
        if left >= SEARCH_MIN_SECONDS or args.tiny:
            run_search(report, plan, args, max(left, SEARCH_MIN_SECONDS))
        else:
            report.add("search", f"skipped: {left:.0f} s left of the budget", [])
    report.head["total_s"] = time.monotonic() - begun
    report.write()
    print(report.text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
