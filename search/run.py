"""The ONE run loop: run trials in this process until the study's target is met (or its grid
queue is empty). The plain search, every `--workers` process, `optuna-search worker` and
every Ray actor call `run_process`; none of them keeps its own count.

Each turn claims a trial under the study's lock (search/claim.py decides from the storage
alone), runs it with a heartbeat, records how it ended and saves the study's figures for
optuna-dashboard (at most ~10% of the time: reports/dashboard_figures.py). When nothing can
be claimed but trials still run elsewhere, the loop waits: one of them may die and come back
as a retry. A trial that fails is queued again when it was interrupted (Ctrl-C, a signal: it
resumes from its checkpoint) or is a grid point or an audit's trial (3 tries in all); other
failures (say, out of memory) leave the budget to a new sample.
"""
from __future__ import annotations

import gc
import os
import socket
import time
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from reports.study_data import describe_study
from reports.table import REPEAT_ATTR
from reports.trial_data import RUN, trial_value
from search.claim import DONE, WAIT, claim, tally
from search.errors import StudyMismatch
from search.interrupts import Interrupts, stop_requested
from search.objective import BrokenDevice, Objective, Runtime, sweep_checkpoints
from search.progress import Progress
from search.settings import RunSettings
from search.study import OpenStudy, open_study, start_run
from search.train.data import make_dataset
from search.train.gpu_share import cap_memory
from search.train.trainer import pick_device
from storage import StorageFault

MAX_FAILURES_IN_A_ROW = 3     # then this process stops: something is wrong beyond one trial
MAX_REPEATS_IN_A_ROW = 100    # proposals of trained configurations (instant each), then stop
WAIT_SECONDS = 5.0            # how often an idle process looks again at trials running elsewhere
FAIL_WRITE_SECONDS = 5.0      # the storage is gone: how long to try marking the trial FAIL

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
    repeats_in_a_row: int = 0


def run_process(settings: RunSettings, out, data=None,
                opened: OpenStudy | None = None) -> RunResult:
    """One process's share of a search: load the data once (unless given), open the study as
    a new run (or start a run in one the launcher opened), and run trials until the study
    needs no more from this process: claim one under the study's lock (search/claim.py
    decides from the storage alone), run it with a heartbeat, record how it ended.

    Ctrl-C / SIGTERM: the running trial is failed and queued again, and the result says
    `interrupted`; nothing is left RUNNING.
    """
    interrupts, result = Interrupts(), RunResult()
    with interrupts.installed():
        try:
            with interrupts.raising():  # nothing is held yet: an interrupt stops right here
                device, data = _place(settings, data)
            settings = with_loaded_data(settings, data)  # the parent's, or the study's
        except KeyboardInterrupt:
            return RunResult(interrupted=True)
        opened = start_run(opened) if opened is not None else open_study(settings)
        study, store = opened.study, opened.store
        sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
        describe_study(study, sizes)  # the split and a line for the dashboard's study card
        objective = Objective(settings.spec, Runtime(
            store, data, device, opened.uid, capture=settings.capture,
            shared_by=settings.device_shared_by, should_stop=stop_requested,
            # checkpoints are worth writing where a killed trial is retried (a heartbeat)
            checkpoint_every=settings.checkpoint_every if store.heartbeat_seconds else None))
        objective.progress = progress = Progress(out, quiet=settings.quiet)
        said_waiting = False
        # The dashboard's learning curves and study note, while the search runs; imported
        # here, as plotly takes ~1 s to import and the command's first line should not wait.
        from reports.dashboard_figures import LiveFigures
        from reports.study_note import LiveNote
        figures = LiveFigures(study)
        note = LiveNote(study, lambda: store.lock(settings.study_name))
        t = tally(study, settings)
        progress.study(t.finished, t.target, settings.spec.epochs, _best(study))
        deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
        gc.freeze()  # the data and libraries: the per-trial gc.collect skips them (~0.2 s)
        try:
            while not interrupts.requested:
                with store.lock(settings.study_name):
                    claimed = claim(study, store, settings)
                    if claimed not in (DONE, WAIT):   # who runs it, in the same step: under
                        # the lock a RUNNING trial without it is one whose claimer died
                        store.set_system_attr(claimed, RUN, {   # (not on the trial page)
                            "run": opened.run, "sampler_seed": opened.sampler_seed,
                            "host": socket.gethostname(), "pid": os.getpid()})
                if claimed == DONE:
                    break
                if claimed == WAIT:
                    if not said_waiting:
                        running = tally(study, settings).running
                        progress.line(f"waiting: {running} trial(s) still running elsewhere; "
                                      "one that dies comes back here as a retry")
                        said_waiting = True
                    interrupts.sleep(_wait_seconds(store))
                    continue
                said_waiting = False
                frozen = run_one(opened, claimed, objective, interrupts, settings)
                progress.trial_finished(frozen, tally(study, settings).finished, _best(study))
                for trouble in (figures.after_trial(), note.after_trial()):
                    if trouble:
                        progress.line(trouble)
                if _count(result, frozen, interrupts):
                    break
                # Checked after a trial, not before the first: each process runs at least
                # one, however long its start-up (a loaded machine, a slow storage) took.
                if deadline is not None and time.monotonic() >= deadline:
                    result.timed_out = True
                    break
        except StorageFault as fault:
            result.storage_error = str(fault)
        except BrokenDevice as failure:
            again = "the trial is queued again and " if failure.retry else "the trial failed; "
            result.stopped = (f"the device failed ({str(failure)[:300]}); this process's GPU "
                              f"is unusable, so it stopped; {again}the same command resumes "
                              "in a new process")
        finally:
            gc.unfreeze()  # matters when several runs share one process (tests, reproduce)
            progress.close()
        result.interrupted = interrupts.requested
        if not (result.interrupted or result.timed_out or result.stopped
                or result.storage_error):  # the study is done: what no retry will read goes
            sweep_checkpoints(store, opened.uid, study)
    return result


def _place(settings: RunSettings, data):
    """The device of this process, its share of it, and the data on it (loaded unless given)."""
    device = pick_device(settings.device)
    if device.type == "cpu" and settings.workers > 1:  # share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
    # Trials sharing a GPU: each process its share of the memory, so an out-of-memory error
    # fails the trial that asked for too much, alone.
    cap_memory(device, settings.device_shared_by)
    return device, (data if data is not None else load_data(settings)).to(device)


def _count(result: RunResult, frozen: optuna.trial.FrozenTrial, interrupts: Interrupts) -> bool:
    """Count how the trial ended; True when this process should stop (failures in a row)."""
    if frozen.state in FINISHED and REPEAT_ATTR in frozen.user_attrs:
        result.repeats_in_a_row += 1
        if result.repeats_in_a_row >= MAX_REPEATS_IN_A_ROW:
            result.stopped = (f"the sampler proposed {MAX_REPEATS_IN_A_ROW} configurations in "
                              "a row that were trained already: the space is nearly "
                              "exhausted; run a larger space (--space wide) or fewer --trials")
            return True
    elif frozen.state in FINISHED:
        result.finished.append(frozen.number)
        result.failures_in_a_row = result.repeats_in_a_row = 0
    elif frozen.state == TrialState.FAIL:
        result.failed.append(frozen.number)
        result.failures_in_a_row += 1
        if result.failures_in_a_row >= MAX_FAILURES_IN_A_ROW and not interrupts.requested:
            reason = trial_value(frozen, "fail_reason", "no reason recorded")
            result.stopped = (f"{MAX_FAILURES_IN_A_ROW} trials in a row failed here "
                              f"(last: {reason[:200]}); fix that and run the same command")
            return True
    return False


def load_data(settings: RunSettings, say=None):
    """The data set of this run, split as the study's spec says (search/train/data.py); a
    stop noted meanwhile ends the load within an image (Stopped, a KeyboardInterrupt)."""
    spec = settings.spec
    return make_dataset(settings.data_source, settings.data_dir, seed=spec.seed,
                        val_size=spec.val_size, train_subset=spec.train_subset,
                        test_subset=spec.test_subset, say=say, should_stop=stop_requested)


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


def run_one(opened: OpenStudy, trial: optuna.Trial, objective, interrupts: Interrupts,
            settings: RunSettings) -> optuna.trial.FrozenTrial:
    """Run the objective on a claimed trial, record how it ended, queue a retry if due.

    Raises StorageFault when the storage is gone: the trial is failed with that reason if
    the storage still answers within a few seconds, else its heartbeat stops and the next
    process that claims a trial takes it for dead and queues it again."""
    study, store = opened.study, opened.store
    value, state, interrupted, broken = None, TrialState.FAIL, False, None
    with store.heartbeat(trial):
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
            return store.trial(trial)
        except StorageFault as fault:
            store.fail(study, trial, str(fault), seconds=FAIL_WRITE_SECONDS)
            raise
        except BrokenDevice as error:  # this process's GPU is unusable: it stops here
            broken, interrupted = error, error.retry   # the trial runs again elsewhere, or not
        except Exception:  # the objective recorded its reason (fail_reason) already
            pass
    # Under the study's lock: a process deciding what runs next (search/claim.py) or queueing
    # grid points (search/study.py) sees the FAIL and its retry together, never the FAIL alone
    # (it would queue the point or sample a trial a second time).
    # The FAIL and its retry go in steps that a kill at any point leaves whole (retries.py).
    with store.lock(settings.study_name):
        try:
            if state == TrialState.FAIL and (interrupted or settings.spec.queued_only):
                frozen = store.fail_and_retry(study, trial,
                                              lambda: study.tell(trial, value, state=state))
                if frozen is None:
                    return store.trial(trial)
            else:
                study.tell(trial, value, state=state)
                frozen = store.trial(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            return store.trial(trial)
    if broken is not None:
        raise broken.with_traceback(None)
    return frozen


def _best(study: optuna.Study) -> tuple[int, float] | None:
    """The best complete trial's (number, value), the earlier one of a tie (as Optuna's)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: (t.value, -t.number), default=None)
    return (best.number, best.value) if best is not None else None


def _wait_seconds(store) -> float:
    interval = store.heartbeat_seconds
    return min(WAIT_SECONDS, float(interval)) if interval else WAIT_SECONDS
