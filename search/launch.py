"""Placing runners: the run loop (search/run.py) in this process, in N local processes
(`--workers N`), or on a Ray cluster (`--ray`, search/ray_cluster.py). The study holds the
target and the queue; a launcher only starts runners, relays what they print, and reports.

Local processes are started with "spawn" (CUDA cannot be forked). Each loads the data once
(the parent loaded it first, so a bad source fails before anything is written and a decode
fills the cache once) and prints one line per finished trial through the parent, prefixed
by its number ("[w2] trial  17 COMPLETE ..."). GPUs go out round-robin through
CUDA_VISIBLE_DEVICES. Ctrl-C / SIGTERM reach every process: each fails its running trial,
queues it again and exits; one still importing exits at once (search/child.py, the first code
each runs, has its handler on before torch loads). When the parent dies by any signal, SIGKILL
included, its children get SIGTERM from the kernel (Linux's parent-death signal; elsewhere a
watchdog thread notices within a second) and do the same: no orphan keeps running trials unseen.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from multiprocessing import resource_tracker
import os
import pickle
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field

import optuna
import torch

from search import child
from search.errors import USER_ERRORS
from search.progress import LineSender, print_summary, quiet_optuna
from search.claim import is_done, progress_line, tally
from search.cpu_cost import cpu_line
from search.interrupts import check_stop, note_stop, stop_requested
from search.run import RunResult, load_data, run_process, with_loaded_data
from search.settings import RunSettings
from search.study import grid_failures, open_study
from search.terminal import say, transient
from search.train.trainer import pick_device
from storage import redact

POLL_SECONDS = 0.2      # how often the parent looks at its workers while no line arrives


@dataclass
class Outcome:
    """What the runners of one launch reported, merged."""
    errors: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    storage_errors: list[str] = field(default_factory=list)   # the storage is gone
    interrupted: bool = False
    killed: list[tuple[int, int]] = field(default_factory=list)   # (worker, signal)
    reported: set[int] = field(default_factory=set)   # workers that sent a result or an error
    timed_out: bool = False

    def add(self, result: RunResult) -> None:
        self.interrupted |= result.interrupted
        self.timed_out |= result.timed_out
        if result.stopped:
            self.stopped.append(result.stopped)
        if result.storage_error:
            self.storage_errors.append(result.storage_error)


def run_search(settings: RunSettings, out=None, data=None) -> int:
    """Run a search to its target; 0 when done, 130 when interrupted, 1 when runners failed.

    `data` (a search.train.data.Dataset) skips the load: `reproduce` loads once for five studies.
    """
    out = sys.stdout if out is None else out  # looked up now: tests and callers swap stdout
    quiet_optuna()
    if data is None:
        with transient(out) as note:   # a first decode's note: the data's line replaces it
            data = load_data(settings, say=note)
    settings = with_loaded_data(settings, data)
    opened = open_study(settings, new_run=False)   # made here, once; runners start runs in it
    study = opened.study
    # The data, named once (the command's first line named the study), and where a resumed
    # study stands; then, without a GPU, what the search will cost.
    t = tally(study, settings)
    resumed = t.finished or t.running or t.waiting or t.repeats
    say(out, f"data {data.describe()}"
        + (f"; {progress_line(study, settings)}" if resumed else ""))
    if is_done(study, settings):
        say(out, "every queued trial is done; nothing to run" if settings.spec.audit_of else
            "every grid point is already done; nothing to run" if settings.spec.grid else
            "the study's target is met; nothing to run (a larger --trials extends it)")
        return report(Outcome(), study, settings, out)

    if not settings.ray and pick_device(settings.device).type == "cpu":
        left = (len(settings.spec.grid_points) if settings.spec.grid else t.target) - t.finished
        say(out, cpu_line(settings.spec, left, len(data.train), len(data.val),
                          torch.get_num_threads(), settings.workers))
    outcome = Outcome()
    check_stop()  # a stop whose KeyboardInterrupt was lost (a finalizer): no runner starts
    if settings.ray:
        from search.ray_cluster import run_on_ray
        del data  # each actor loads its own copy
        run_on_ray(settings, out, outcome, opened)
    elif settings.workers > 1:
        del data  # each worker loads its own copy
        run_local_processes(settings, out, outcome)
    else:
        outcome.add(run_process(settings, out, data, opened))
    return report(outcome, study, settings, out)


def report(outcome: Outcome, study: optuna.Study, settings: RunSettings, out) -> int:
    """The summary, and the exit status: 130 interrupted, 1 something failed, else 0."""
    if outcome.storage_errors:  # every worker lost it: one line says it for all
        say(sys.stderr, f"optuna-search: error: {outcome.storage_errors[0]}")
        return 1  # the summary would wait for the storage once more: it says nothing new
    for error in dict.fromkeys(outcome.errors):  # the same error from N workers: once
        say(sys.stderr, f"optuna-search: error: {error}")
    for index, signum in outcome.killed:
        say(sys.stderr, f"optuna-search: worker {index} was killed (signal {signum}); its "
            "trial is failed and queued again once its heartbeat is overdue")
    print_summary(study, settings, out)
    if outcome.interrupted:
        say(sys.stderr, f"interrupted; unfinished trials are marked FAIL and queued again, "
            f"nothing is left RUNNING. Resume with the same command (study "
            f"{settings.study_name!r} in {redact(settings.storage)}).")
        return 130
    for message in dict.fromkeys(outcome.stopped):
        say(sys.stderr, f"optuna-search: stopped: {message}")
    exhausted = (grid_failures(study, settings.spec)
                 if settings.spec.grid and not settings.spec.audit_of else [])
    if exhausted:
        points = "; ".join(",".join(f"{k}={v}" for k, v in p.items()) for p in exhausted)
        say(sys.stderr, f"optuna-search: grid points that failed every try: {points} (see "
            "their fail_reason in `optuna-search report --include-pruned`)")
    if outcome.timed_out:
        say(out, "--timeout reached: no new trial was started after it")
    t = tally(study, settings)
    if not settings.spec.grid and t.exhausted and t.finished < t.target:
        say(out, f"the space has {t.space} configurations and every one is trained: the "
            f"study ends with {t.finished} of its target {t.target}")
    failed = outcome.errors or outcome.killed or outcome.stopped or exhausted
    return 1 if failed else 0


# ------------------------------------------------------------------ local processes

def gpu_assignment(workers: int, device: str = "auto") -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: the visible GPUs round-robin; None on the CPU."""
    if device == "cpu" or not torch.cuda.is_available():
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = ([v.strip() for v in visible.split(",") if v.strip()] if visible
           else [str(i) for i in range(torch.cuda.device_count())])
    return [ids[i % len(ids)] for i in range(workers)]


def run_local_processes(settings: RunSettings, out, outcome: Outcome) -> None:
    """settings.workers processes of the run loop; returns when all have exited."""
    gpus = gpu_assignment(settings.workers, settings.device)
    context = multiprocessing.get_context("spawn")
    # A pipe per worker, which it alone writes (search/child.py Outbox): no named semaphore
    # (a Queue has three) for a launcher killed outright to leave behind.
    pipes = [context.Pipe(duplex=False) for _ in range(settings.workers)]
    # Timings of trials that share a device (a GPU, or the CPU's cores) are not those of one
    # trial alone: each trial records how many shared it, and reports say so.
    shared = [gpus.count(gpu) if gpu is not None else settings.workers for gpu in gpus]
    processes = [context.Process(target=child.start, name=f"optuna-search-w{i}",
                                 args=(pickle.dumps(settings.replace(device_shared_by=shared[i])),
                                       i, gpus[i], os.getpid(), pipes[i][1]))
                 for i in range(settings.workers)]
    readers = [reader for reader, _ in pipes]

    told: set[int] = set()   # the workers sent the stop

    def tell(signum: int) -> None:
        outcome.interrupted = True
        for process in processes:
            if process.pid is not None and process.pid not in told and process.is_alive():
                os.kill(process.pid, signum)
                told.add(process.pid)

    def forward(signum, _frame):  # never raises: this process only waits for its workers
        note_stop(signum)
        tell(signum)

    handlers = {}
    # Started with the stop signals blocked (the mask is inherited): each child takes a
    # signal sent meanwhile once its handler is on (search/child.py). Here another thread
    # (torch's) may take one while the main thread blocks them, and `forward` then runs
    # before every worker is started: the loop below tells the later ones. multiprocessing's
    # resource tracker is started first: starting it (in the first process.start()) unblocks
    # SIGINT and SIGTERM, and the workers would start with them unblocked.
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, child.STOP_SIGNALS)
    try:
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, forward) for s in child.STOP_SIGNALS}
        try:
            for process, (_, writer) in zip(processes, pipes):
                process.start()
                writer.close()  # the worker's now: its pipe ends when the worker does
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        while any(p.is_alive() for p in processes):
            if stop_requested():   # the stop is a state: each worker is told once
                tell(signal.SIGTERM)
            _relay(readers, out, outcome, timeout=POLL_SECONDS)
        while _relay(readers, out, outcome, timeout=0):  # lines sent just before exiting
            pass
        for process in processes:
            process.join()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for reader, writer in pipes:
            reader.close()
            writer.close()
    for i, process in enumerate(processes):
        code = process.exitcode
        if outcome.interrupted and (code == child.INTERRUPTED or (code or 0) < 0):
            continue  # stopped by the interrupt (before its loop started, or by the signal)
        if code is not None and code < 0:
            outcome.killed.append((i, -code))
        elif code and i not in outcome.reported:  # it died before its loop could say why
            outcome.errors.append(f"worker {i} exited with status {code} before it reported "
                                  "(its own output, above, says why)")


def _relay(readers: list, out, outcome: Outcome, timeout: float) -> bool:
    """Handle one message from a worker (waiting up to `timeout` for one); False when none
    came. A pipe at its end (its worker has exited, all read) leaves `readers`."""
    for reader in multiprocessing.connection.wait(readers, timeout):
        try:
            message = reader.recv()
        except EOFError:
            readers.remove(reader)
            return True
        _handle(message, out, outcome)
        return True
    return False


def _handle(message: tuple, out, outcome: Outcome) -> None:
    kind, index, payload = message
    if kind == "line":
        say(out, f"[w{index}] {payload}")   # wrapped here, to this terminal's width
    elif kind == "error":
        outcome.reported.add(index)
        outcome.errors.append(f"worker {index}: {payload}")
    elif kind == "result":
        outcome.reported.add(index)
        outcome.add(payload)


def worker_main(settings: RunSettings, index: int, messages) -> int:
    """One local worker process (started by search/child.py): the run loop, its lines and
    result sent to the parent; returns the exit status."""
    quiet_optuna()
    try:
        result = run_process(settings, LineSender(messages.put, index))
        messages.put(("result", index, result))
        return 0
    except USER_ERRORS as error:
        messages.put(("error", index, str(error)))
    except Exception as error:  # unexpected: say so in one line, the details on stderr
        traceback.print_exc()
        messages.put(("error", index, f"{type(error).__name__}: {error}"))
    return 1
