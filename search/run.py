"""The ONE run loop: run trials in this process until the study's target is met (or its grid
queue is empty). The plain search, every `--workers` process, `optuna-search worker` and
every Ray actor call `run_process`; none of them keeps its own count.

Each turn claims a trial under the study's lock (search/claim.py decides from the storage
alone), runs it with a heartbeat, and records how it ended. When nothing can be claimed but
trials still run elsewhere, the loop waits: one of them may die and come back as a retry. A
trial that fails is queued again when it was interrupted (Ctrl-C, a signal: it resumes from
its checkpoint) or is a grid point (3 tries in all); other failures (say, out of memory) leave
the budget to a new sample.
"""
from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from search.train.data import make_dataset
from search.errors import StudyMismatch
from search.train.gpu_share import cap_memory
from search.interrupts import Interrupts
from search.objective import BrokenDevice, Objective, sweep_checkpoints
from search.progress import Progress
from search.settings import RunSettings
from search.claim import DONE, WAIT, claim, heartbeat_interval, tally
from search.study import OpenStudy, open_study
from search.train.trainer import pick_device
from storage import StorageFault, keep_signals_off_this_thread, retry_callback, study_lock

MAX_FAILURES_IN_A_ROW = 3     # then this process stops: something is wrong beyond one trial
WAIT_SECONDS = 5.0            # how often an idle process looks again at trials running elsewhere
FAIL_WRITE_SECONDS = 5.0      # the storage is gone: how long to try marking the trial FAIL
HEARTBEAT_JOIN_SECONDS = 1.0

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
            settings = with_loaded_data(settings, data)  # the parent's, or the study's
        except KeyboardInterrupt:
            return RunResult(interrupted=True)
        opened = open_study(settings)
        objective = Objective.for_run(
            settings, opened.uid, data, device,
            retries=heartbeat_interval(opened.study._storage) is not None)
        objective.progress = progress = Progress(out, quiet=settings.quiet)
        gc.freeze()  # the data and libraries: the per-trial gc.collect skips them (~0.2 s)
        try:
            result = run_trials(opened, settings, objective, progress, interrupts)
        finally:
            gc.unfreeze()  # matters when several runs share one process (tests, reproduce)
            progress.close()
        if not (result.interrupted or result.timed_out or result.stopped
                or result.storage_error):  # the study is done: what no retry will read goes
            sweep_checkpoints(objective.s.checkpoint_dir, opened.uid, opened.study)
    return result


def load_data(settings: RunSettings, say=None):
    """The data set of this run, split as the study's spec says (search/train/data.py)."""
    spec = settings.spec
    return make_dataset(settings.data_source, settings.data_dir, seed=spec.seed,
                        val_size=spec.val_size, train_subset=spec.train_subset,
                        test_subset=spec.test_subset, say=say)


def with_loaded_data(settings: RunSettings, data) -> RunSettings:
    """The settings once the data is loaded: a new spec records the data's content; a spec
    that has it (a study being joined) must find the same content, wherever it lies."""
    spec = settings.spec
    if not spec.data_content:
        return settings.replace(spec=spec.with_data(data.fingerprint))
    if data.fingerprint != spec.data_content:
        raise StudyMismatch(f"the data at {settings.data_source} (content {data.fingerprint}) "
                            f"is not the data study {settings.study_name!r} was made with "
                            f"({spec.data} of content {spec.data_content})")
    return settings


def run_trials(opened: OpenStudy, settings: RunSettings, objective, progress: Progress,
               interrupts: Interrupts) -> RunResult:
    """Claim and run trials until the study needs no more from this process."""
    result = RunResult()
    try:
        _loop(opened, settings, objective, progress, interrupts, result)
    except StorageFault as fault:
        result.storage_error = str(fault)
    except BrokenDevice as failure:
        again = ("the trial is queued again and " if failure.retry
                 else "the trial failed; ")
        result.stopped = (f"the device failed ({str(failure)[:300]}); this process's GPU is "
                          f"unusable, so it stopped; {again}the same command resumes in a new "
                          "process")
    result.interrupted = interrupts.requested
    return result


def _loop(opened: OpenStudy, settings: RunSettings, objective, progress: Progress,
          interrupts: Interrupts, result: RunResult) -> None:
    study = opened.study
    started = time.monotonic()
    said_waiting = False
    t = tally(study, settings)
    progress.study(t.finished, t.target, settings.spec.epochs, _best(study))
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
                progress.line(f"waiting: {running} trial(s) still running elsewhere; one "
                              "that dies comes back here as a retry")
                said_waiting = True
            interrupts.sleep(_wait_seconds(study))
            continue
        said_waiting = False
        claimed.set_user_attr("run", {"run": opened.run, "sampler_seed": opened.sampler_seed,
                                      "host": socket.gethostname(), "pid": os.getpid()})
        frozen = run_one(study, claimed, objective, interrupts, settings)
        progress.trial_finished(frozen, tally(study, settings).finished, _best(study))
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


def run_one(study: optuna.Study, trial: optuna.Trial, objective, interrupts: Interrupts,
            settings: RunSettings) -> optuna.trial.FrozenTrial:
    """Run the objective on a claimed trial, record how it ended, queue a retry if due.

    Raises StorageFault when the storage is gone: the trial is failed with that reason if
    the storage still answers within a few seconds, else its heartbeat stops and the next
    process that claims a trial takes it for dead and queues it again."""
    value, state, interrupted, broken = None, TrialState.FAIL, False, None
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
        except BrokenDevice as error:  # this process's GPU is unusable: it stops here
            broken, interrupted = error, error.retry   # the trial runs again elsewhere, or not
        except Exception:  # the objective recorded its reason (fail_reason) already
            pass
    # Under the study's lock: a process deciding what runs next (search/claim.py) or queueing
    # grid points (search/study.py) sees the FAIL and its retry together, never the FAIL alone
    # (it would queue the point or sample a trial a second time).
    with study_lock(study._storage, settings.storage, settings.study_name):
        try:
            study.tell(trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            return study._storage.get_trial(trial._trial_id)
        frozen = study._storage.get_trial(trial._trial_id)
        if state == TrialState.FAIL and (interrupted or settings.spec.grid):
            retry_callback()(study, frozen)
    if broken is not None:
        raise broken.with_traceback(None)
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


@contextlib.contextmanager
def _heartbeat(storage, trial_id: int):
    """Record the trial's heartbeat every interval while the block runs (RDB storages)."""
    interval = heartbeat_interval(storage)
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


def _best(study: optuna.Study) -> float | None:
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(values) if values else None


def _wait_seconds(study: optuna.Study) -> float:
    interval = heartbeat_interval(study._storage)
    return min(WAIT_SECONDS, float(interval)) if interval else WAIT_SECONDS
