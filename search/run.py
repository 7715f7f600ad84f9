"""The ONE run loop: run trials in this process until the study's target is met (or its grid
queue is empty). The plain search, every `--workers` process, `optuna-search worker` and
every Ray actor call `run_trials`; none of them keeps its own count.

Each turn claims a trial under the study's lock (storage/lock.py), deciding from the storage
alone:
- heartbeat-stale trials (their process died) are failed and queued again as retries;
- a grid study runs its queued points (put in the storage once, by search/study.py);
- any other study runs a queued trial (a retry, a published row) or samples a new one while
  finished (COMPLETE + PRUNED) + running trials stay below the study's target.
When nothing can be claimed but trials still run elsewhere, the loop waits: one of them may
die and come back as a retry. A trial that fails is queued again when it was interrupted
(Ctrl-C, a signal: it resumes from its checkpoint) or is a grid point (at most MAX_TRIES
tries); other failures (say, out of memory) leave the budget to a new sample.
"""
from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from search.data import make_dataset
from search.gpu_share import cap_memory
from search.interrupts import Interrupts, keep_signals_off_this_thread
from search.objective import Objective, sweep_checkpoints
from search.progress import print_trial
from search.settings import RunSettings
from search.study import MAX_TRIES, TARGET_ATTR, OpenStudy, open_study
from search.trainer import pick_device
from storage import StorageFault, study_lock

MAX_FAILURES_IN_A_ROW = 3     # then this process stops: something is wrong beyond one trial
WAIT_SECONDS = 5.0            # how often an idle process looks again at trials running elsewhere
FAIL_WRITE_SECONDS = 5.0      # the storage is gone: how long to try marking the trial FAIL
HEARTBEAT_JOIN_SECONDS = 1.0

DONE, WAIT = "done", "wait"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class RunResult:
    """What one process's loop did; the study itself is the record of what happened."""
    finished: list[int] = field(default_factory=list)   # trial numbers COMPLETE or PRUNED here
    failed: list[int] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None  # why the loop gave up early (failures in a row), for the user
    storage_error: str | None = None  # the storage is gone: one line, exit 1
    timed_out: bool = False
    failures_in_a_row: int = 0


def run_process(settings: RunSettings, out, data=None) -> RunResult:
    """One process's share of a search: load the data once (unless given), open the study as
    a new run, and run trials until the study needs no more from it.

    Ctrl-C / SIGTERM: the running trial is failed and queued again, and the result says
    `interrupted`; nothing is left RUNNING.
    """
    interrupts = Interrupts()
    with interrupts.installed():
        try:
            with interrupts.raising():  # nothing is held yet: an interrupt stops right here
                device = pick_device(settings.device)
                if device.type == "cpu" and settings.workers > 1:  # share the cores
                    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
                # Trials sharing a GPU: each process its share of the memory, so an
                # out-of-memory error fails the trial that asked for too much, alone.
                cap_memory(device, settings.device_shared_by)
                data = (data if data is not None else load_data(settings)).to(device)
        except KeyboardInterrupt:
            return RunResult(interrupted=True)
        opened = open_study(settings)
        objective = Objective.for_run(
            settings, opened.uid, data, device,
            retries=_heartbeat_interval(opened.study._storage) is not None)
        gc.freeze()  # the data and libraries: the per-trial gc.collect skips them (~0.2 s)
        try:
            result = run_trials(opened, settings, objective, out, interrupts)
        finally:
            gc.unfreeze()  # matters when several runs share one process (tests, reproduce)
        if not (result.interrupted or result.timed_out or result.stopped
                or result.storage_error):  # the study is done: what no retry will read goes
            sweep_checkpoints(objective.s.checkpoint_dir, opened.uid, opened.study)
    return result


def load_data(settings: RunSettings):
    """The data set of this run, split as the study's spec says (search/data.py)."""
    spec = settings.spec
    return make_dataset(settings.data_source, settings.data_dir, seed=spec.seed,
                        val_size=spec.val_size, train_subset=spec.train_subset,
                        test_subset=spec.test_subset)


def run_trials(opened: OpenStudy, settings: RunSettings, objective, out,
               interrupts: Interrupts) -> RunResult:
    """Claim and run trials until the study needs no more from this process."""
    result = RunResult()
    try:
        _loop(opened, settings, objective, out, interrupts, result)
    except StorageFault as fault:
        result.storage_error = str(fault)
    result.interrupted = interrupts.requested
    return result


def _loop(opened: OpenStudy, settings: RunSettings, objective, out, interrupts: Interrupts,
          result: RunResult) -> None:
    study = opened.study
    started = time.monotonic()
    said_waiting = False
    while not interrupts.requested:
        if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
            result.timed_out = True
            return
        with study_lock(study._storage, settings.storage, settings.study_name):
            claimed = claim(study, settings)
        if claimed == DONE:
            return
        if claimed == WAIT:
            if not said_waiting:
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                print(f"waiting: {running} trial(s) still running elsewhere; one that dies "
                      "comes back here as a retry", file=out, flush=True)
                said_waiting = True
            interrupts.sleep(_wait_seconds(study))
            continue
        said_waiting = False
        claimed.set_user_attr("run", {"run": opened.run, "sampler_seed": opened.sampler_seed,
                                      "host": socket.gethostname(), "pid": os.getpid()})
        frozen = run_one(study, claimed, objective, interrupts, settings)
        print_trial(study, frozen, out)
        if frozen.state in FINISHED:
            result.finished.append(frozen.number)
            result.failures_in_a_row = 0
        elif frozen.state == TrialState.FAIL:
            result.failed.append(frozen.number)
            result.failures_in_a_row += 1
            if result.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and not interrupts.requested:
                reason = frozen.user_attrs.get("fail_reason", "no reason recorded")
                result.stopped = (f"{MAX_FAILURES_IN_A_ROW} trials in a row failed here "
                                  f"(last: {reason[:200]}); fix that and run the same command")
                return


@dataclass
class Tally:
    """The study's trials by state, read from the storage, and its target."""
    finished: int      # COMPLETE + PRUNED: what the target counts
    running: int
    waiting: int       # queued: retries, grid points, published rows
    target: int        # the study's target; for a grid, its number of points


def tally(study: optuna.Study, settings: RunSettings) -> Tally:
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    target = (len(settings.spec.grid_points) if settings.spec.grid
              else study.user_attrs[TARGET_ATTR])
    return Tally(count[TrialState.COMPLETE] + count[TrialState.PRUNED],
                 count[TrialState.RUNNING], count[TrialState.WAITING], target)


def is_done(study: optuna.Study, settings: RunSettings) -> bool:
    """Nothing left to run: the target is met, or a grid's queue is empty and none runs."""
    t = tally(study, settings)
    if settings.spec.grid:
        return not t.waiting and not t.running
    return t.finished >= t.target


def progress_line(study: optuna.Study, settings: RunSettings) -> str:
    t = tally(study, settings)
    what = "grid points" if settings.spec.grid else "trials"
    line = f"{t.finished} of {t.target} {what} finished"
    busy = [f"{n} {name}" for n, name in ((t.running, "running"), (t.waiting, "queued")) if n]
    return line + (f" ({', '.join(busy)})" if busy else "")


def claim(study: optuna.Study, settings: RunSettings):
    """Under the study's lock: a RUNNING trial for this process, or WAIT, or DONE."""
    heartbeat = _heartbeat_interval(study._storage) is not None
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    t = tally(study, settings)
    if settings.spec.grid:
        if t.waiting:
            return _ask(study)
        # Without a heartbeat a dead process's trial stays RUNNING for ever: don't wait on it.
        return WAIT if t.running and heartbeat else DONE
    if t.finished >= t.target:
        return DONE
    if t.finished + t.running >= t.target:
        return WAIT if heartbeat else DONE
    return _ask(study)


def _ask(study: optuna.Study) -> optuna.Trial:
    """A queued trial (the oldest first) or a new one, RUNNING, with its first heartbeat."""
    with warnings.catch_warnings():  # we run our own heartbeat around each trial (below)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        trial = study.ask()
    if _heartbeat_interval(study._storage) is not None:
        # Recorded before the lock is released: a process killed right after claiming leaves
        # a trial that goes stale (Optuna never judges a trial that has no heartbeat).
        study._storage.record_heartbeat(trial._trial_id)
    return trial


def run_one(study: optuna.Study, trial: optuna.Trial, objective, interrupts: Interrupts,
            settings: RunSettings) -> optuna.trial.FrozenTrial:
    """Run the objective on a claimed trial, record how it ended, queue a retry if due.

    Raises StorageFault when the storage is gone: the trial is failed with that reason if
    the storage still answers within a few seconds, else its heartbeat stops and the next
    process that claims a trial takes it for dead and queues it again."""
    value, state, interrupted = None, TrialState.FAIL, False
    with _heartbeat(study._storage, trial._trial_id):
        try:
            with interrupts.raising():
                value = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            interrupted = True
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another process took this trial for dead (its heartbeat was late) and failed
            # it: its retry is queued already; nothing here is recorded twice.
            return study._storage.get_trial(trial._trial_id)
        except StorageFault as fault:
            _fail_quickly(study, trial, str(fault))
            raise
        except Exception:  # the objective recorded its reason (fail_reason) already
            pass
    try:
        study.tell(trial, value, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        return study._storage.get_trial(trial._trial_id)
    frozen = study._storage.get_trial(trial._trial_id)
    if state == TrialState.FAIL and (interrupted or settings.spec.grid):
        retry_callback()(study, frozen)
    return frozen


def _fail_quickly(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Mark the trial FAIL with `reason` if the storage answers within a few seconds."""
    backend = getattr(study._storage, "_backend", study._storage)
    patience = getattr(backend, "patience", None)
    if patience is not None:
        backend.patience = min(patience, FAIL_WRITE_SECONDS)
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason[:500])
        study.tell(trial, state=TrialState.FAIL)
    except Exception:  # still away: the heartbeat stops, and the trial goes stale
        pass
    finally:
        if patience is not None:
            backend.patience = patience


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """The same queueing as the heartbeat's: same params, history and reported epochs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_TRIES - 1, inherit_intermediate_values=True)


@contextlib.contextmanager
def _heartbeat(storage, trial_id: int):
    """Record the trial's heartbeat every interval while the block runs (RDB storages)."""
    interval = _heartbeat_interval(storage)
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat():
        keep_signals_off_this_thread()
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # the next beat tries again; the storage reports long outages
                pass

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # A beat may be waiting out an outage (up to the storage's patience): don't wait
        # for it; the thread is a daemon and ends with its retry.
        thread.join(timeout=HEARTBEAT_JOIN_SECONDS)


def _heartbeat_interval(storage) -> int | None:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


def _wait_seconds(study: optuna.Study) -> float:
    interval = _heartbeat_interval(study._storage)
    return min(WAIT_SECONDS, float(interval)) if interval else WAIT_SECONDS
