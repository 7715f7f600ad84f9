"""Several worker processes on one study: `--workers N` on this machine, and
`optuna-search worker STUDY --storage URL` to join a study from another machine.

The parent checks everything first and loads the data once (a bad source fails before any
study is written; a download or decode happens once, not N times at once), opens the study,
then starts the workers with the "spawn" context. Each worker loads the data once and takes
trials from a shared count until it is spent, so N workers run exactly --trials between them
however fast each one is. The workers send one line per finished trial; the parent prints it
prefixed by the worker ("[w2] trial  17 COMPLETE ..."), so lines never interleave.
GPUs are handed out round-robin through CUDA_VISIBLE_DEVICES; several workers may share one.
SIGINT/SIGTERM to the parent are forwarded: each worker fails its running trial and exits,
and the parent waits for them. A worker killed outright (SIGKILL, a lost machine) leaves its
trial RUNNING; the storage's heartbeat marks it FAIL and queues a retry (storage/open.py).
"""
from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import replace

import optuna
import torch

from search.data import DataError, make_dataset
from search.interrupts import Interrupts, fail_if_running, hide_interrupt_traceback
from search.progress import print_summary, print_trial
from search.study import (SearchSettings, StudyMismatch, enqueue_published, make_objective,
                          make_sampler, open_study, remaining_grid_points,
                          requeue_failed_grid_points)
from search.trainer import pick_device
from storage import StorageError, check_url, open_storage, redact

POLL_SECONDS = 0.2      # how often the parent looks at its workers while no line arrives


# ------------------------------------------------------------------ the parent

def run_workers(settings: SearchSettings, out=None, join: bool = False) -> int:
    """Run settings.trials trials (a grid: the points not yet done) with settings.workers
    processes; 0 when done, 130 when interrupted, 1 when a worker died or failed.

    `join` (the `worker` command): the study must exist, each worker samples with fresh
    randomness (other machines use the same study seed), and one worker runs in this process.
    """
    out = sys.stdout if out is None else out
    _quiet()
    # Load the data before writing anything: a bad source fails here, and a download or a
    # decode happens once, not in N workers at once (they then read the decode cache).
    data = make_dataset(settings.data, settings.data_dir, seed=settings.seed,
                        val_size=settings.val_size, train_subset=settings.train_subset,
                        test_subset=settings.test_subset)
    study = open_study(settings)
    n_trials = settings.trials
    if settings.grid:
        left = remaining_grid_points(study, settings.grid)
        n_trials = left if n_trials is None else min(n_trials, left)
        requeue_failed_grid_points(study, settings.grid)
    if settings.enqueue_report:
        enqueue_published(study, settings)
    gpus = gpu_assignment(settings.workers, settings.device)
    print(f"study {settings.study_name!r} in {redact(settings.storage)}: "
          f"{len(study.trials)} trials so far; {n_trials} to run with {settings.workers} "
          f"worker(s); data {data.describe()}"
          + (f"; GPUs {','.join(gpus)}" if gpus[0] is not None else ""), file=out, flush=True)
    if n_trials == 0:
        print("every grid point is already done; nothing to run", file=out)
        return print_summary(study, settings, out)

    outcome = {"errors": [], "interrupted": [], "signals": [], "exitcodes": []}
    if settings.workers == 1:  # `worker` on a machine with one device: no process to spawn
        budget = multiprocessing.Value("i", n_trials)
        worker_main(settings, 0, None, join, budget, threading.Lock(),
                    _Printer(out, outcome), data=data)
        outcome["exitcodes"].append(0)
        return _report(outcome, study, settings, out)
    del data  # each worker loads its own copy
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    budget = context.Value("i", n_trials)           # trials not yet claimed by a worker
    grid_lock = context.Lock()
    messages = context.Queue()
    processes = [context.Process(target=worker_main, name=f"optuna-search-w{i}",
                                 args=(settings, i, gpus[i], join, budget, grid_lock, messages))
                 for i in range(settings.workers)]
    _supervise(processes, messages, out, outcome)
    return _report(outcome, study, settings, out)


def gpu_assignment(workers: int, device: str = "auto") -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: the visible GPUs round-robin; None on the CPU."""
    if device == "cpu" or not torch.cuda.is_available():
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = ([v.strip() for v in visible.split(",") if v.strip()] if visible
           else [str(i) for i in range(torch.cuda.device_count())])
    return [ids[i % len(ids)] for i in range(workers)]


def _supervise(processes, messages, out, outcome: dict) -> None:
    """Start the workers, print their lines, forward SIGINT/SIGTERM; wait until all exit."""
    def forward(signum, _frame):
        outcome["signals"].append(signum)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.start()
        while any(p.is_alive() for p in processes):
            _relay(messages, out, outcome, timeout=POLL_SECONDS)
        while _relay(messages, out, outcome, timeout=0):  # lines sent just before exiting
            pass
        for process in processes:
            process.join()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    outcome["exitcodes"] = [p.exitcode for p in processes]


def _relay(messages, out, outcome: dict, timeout: float) -> bool:
    """Handle one message from a worker; False when none came."""
    try:
        message = messages.get(timeout=timeout) if timeout else messages.get_nowait()
    except queue.Empty:
        return False
    _handle(message, out, outcome, prefix=True)
    return True


def _handle(message: tuple, out, outcome: dict, prefix: bool) -> None:
    kind, index, text = message
    if kind == "line":
        print(f"[w{index}] {text}" if prefix else text, file=out, flush=True)
    elif kind == "error":
        outcome["errors"].append(f"worker {index}: {text}" if prefix else text)
    elif kind == "interrupted":
        outcome["interrupted"].append(index)


def _report(outcome: dict, study, settings: SearchSettings, out) -> int:
    for error in dict.fromkeys(outcome["errors"]):  # the same error from N workers: once
        print(f"optuna-search: error: {error}", file=sys.stderr)
    killed = [(i, -code) for i, code in enumerate(outcome["exitcodes"])
              if code is not None and code < 0 and i not in outcome["interrupted"]]
    for index, signum in killed:
        print(f"optuna-search: worker {index} was killed (signal {signum}); its trial is "
              "failed and retried by the next trial that starts after the heartbeat grace "
              "period", file=sys.stderr)
    if outcome["signals"] or outcome["interrupted"]:
        print_summary(study, settings, out)
        print(f"interrupted; the workers' unfinished trials are marked FAIL and nothing is "
              f"left RUNNING. Resume with the same command (study {settings.study_name!r} "
              f"in {redact(settings.storage)}).", file=sys.stderr)
        return 130
    code = print_summary(study, settings, out)
    return 1 if outcome["errors"] or killed else code


# ------------------------------------------------------------------ one worker

class _Lines:
    """A text stream that sends each finished line to the parent (print_trial writes here)."""

    def __init__(self, messages, index: int):
        self.messages, self.index, self.buffer = messages, index, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            self.messages.put(("line", self.index, line))
        return len(text)

    def flush(self) -> None:
        pass


class _Printer:
    """The message queue of the one worker run in the parent's own process."""

    def __init__(self, out, outcome: dict):
        self.out, self.outcome = out, outcome

    def put(self, message: tuple) -> None:
        _handle(message, self.out, self.outcome, prefix=False)


def worker_main(settings: SearchSettings, index: int, gpu: str | None, join: bool,
                budget, grid_lock, messages, data=None) -> None:
    """One worker: load the data once (unless given), then run trials while the budget
    lasts. Sends ("line" | "error" | "interrupted", index, text) to `messages`."""
    if gpu is not None:  # before anything touches CUDA in this fresh (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    previous = {s: signal.signal(s, _interrupt_once) for s in (signal.SIGINT, signal.SIGTERM)}
    _quiet()
    out = _Lines(messages, index)
    study, interrupts = None, None
    try:
        device = pick_device(settings.device)
        if device.type == "cpu":  # share the cores instead of each worker taking all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, settings.workers)))
        if data is None:
            data = make_dataset(settings.data, settings.data_dir, seed=settings.seed,
                                val_size=settings.val_size, train_subset=settings.train_subset,
                                test_subset=settings.test_subset)
        data = data.to(device)
        study = open_study(settings)
        study.sampler = _worker_sampler(settings, index, join, grid_lock)
        objective = make_objective(settings, data, device)
        gc.freeze()  # the data and libraries: the per-trial gc.collect skips them (~0.2 s)
        print(f"ready on {device}" + (f" (CUDA_VISIBLE_DEVICES={gpu})" if gpu else ""),
              file=out)

        interrupts = Interrupts(study)  # from here on, a signal never strands a trial
        started = time.monotonic()
        with interrupts.installed():
            while (not interrupts.requested and not _timed_out(settings.timeout, started)
                   and _claim(budget)):
                study.optimize(interrupts.guard(objective), n_trials=1, catch=(Exception,),
                               show_progress_bar=False,
                               callbacks=[lambda st, t: print_trial(st, t, out)])
        if interrupts.requested:
            raise KeyboardInterrupt("interrupted between trials")
    except KeyboardInterrupt:
        if interrupts is not None:
            fail_if_running(study, interrupts.trial_ids)
        messages.put(("interrupted", index, ""))
    except (StorageError, DataError, StudyMismatch) as error:
        messages.put(("error", index, str(error)))
    except Exception as error:  # unexpected: say so in one line, the details on stderr
        traceback.print_exc()
        messages.put(("error", index, f"{type(error).__name__}: {error}"))
    finally:
        gc.unfreeze()  # matters only when this worker ran inside the parent's process
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _quiet() -> None:
    """Our own line per trial instead of Optuna's log; no notes on experimental features."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna.study._optimize").addFilter(hide_interrupt_traceback)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _interrupt_once(signum, _frame):
    """While the worker loads (before its trials' Interrupts take over), the first
    SIGINT/SIGTERM stops it; more (Ctrl-C reaches parent and workers, and the parent
    forwards it too) must not interrupt the cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def _claim(budget) -> bool:
    with budget.get_lock():
        if budget.value <= 0:
            return False
        budget.value -= 1
        return True


def _timed_out(timeout: float | None, started: float) -> bool:
    return timeout is not None and time.monotonic() - started >= timeout


def _worker_sampler(settings: SearchSettings, index: int, join: bool, grid_lock):
    """Each worker its own seed: with one seed, all would draw the same random first trials.
    A joining worker (another machine) draws a fresh one."""
    if settings.grid:
        # The study's seed shuffles the grid, so a grid id names the same point in every
        # process; the point to run next is then picked with this worker's own randomness.
        sampler = _LockedGridSampler(settings.grid, seed=settings.seed, lock=grid_lock)
        sampler.reseed_rng()
        return sampler
    seed = int.from_bytes(os.urandom(4), "little") if join else settings.seed + index
    return make_sampler(replace(settings, seed=seed))[0]


class _LockedGridSampler(optuna.samplers.GridSampler):
    """GridSampler reads which points are taken, then marks its pick: two workers doing that
    at once could pick the same point. One lock across this machine's workers serializes it."""

    def __init__(self, search_space, seed, lock):
        super().__init__(search_space, seed=seed)
        self._lock = lock

    def before_trial(self, study, trial) -> None:
        with self._lock:
            super().before_trial(study, trial)


# ------------------------------------------------------------------ joining a study

def settings_from_study(storage_url: str, study_name: str, **overrides) -> SearchSettings:
    """The settings a study was made with (its user_attrs), for a worker that joins it;
    `overrides` that are not None replace them (trials, epochs, data options, device...)."""
    check_url(storage_url, must_exist=True)  # a worker joins a study; it never makes one
    storage = open_storage(storage_url, heartbeat=False)
    try:
        attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    except KeyError:
        raise StudyMismatch(f"no study {study_name!r} in {redact(storage_url)}; make it with "
                            f"optuna-search MODEL --study {study_name}") from None
    if "model" not in attrs:
        raise StudyMismatch(f"study {study_name!r} was not made by optuna-search "
                            "(it records no model)")
    recorded = dict(attrs.get("data_options") or {})
    settings = SearchSettings(
        model=attrs["model"], storage=storage_url, study=study_name, space=attrs["space"],
        fixed={k: tuple(v) if isinstance(v, list) else v for k, v in attrs["fixed"].items()},
        grid=attrs.get("grid"), sampler=attrs["sampler"]["name"],
        pruner=attrs["pruner"]["name"], seed=attrs["seed"], data=attrs.get("data", "cifar10"),
        epochs=attrs.get("epochs", 30), trials=None if attrs.get("grid") else 30, **recorded)
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
