"""The objective: the ONLY module that touches an optuna.Trial during training.

suggest -> build -> train (trial.report / should_prune each epoch) -> attributes + artifacts.
Value: the best validation accuracy over the epochs. Every finished or pruned trial keeps its
results in user_attrs (reports/trial_data.RESULTS: what the dashboard's trial page shows, one
box without scrolling, rounded to 4 significant digits) and the rest (curves, config, timings,
epochs run, the unrounded results) in system attrs; reports read both through
reports/trial_data.py, from the storage alone. Its artifacts: the first-layer weight and
pictures, and pictures of its learning curves (acc_curves.svg, loss_curves.svg), for its
trial page.
"""
from __future__ import annotations

import gc
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import torch

from reports.pictures import save_first_layer_picture
from reports.curve_picture import trial_pictures
from reports.table import REPEAT_ATTR
from reports.trial_data import (CAPTURE, CONFIG, CURVES, EPOCHS_RUN, FAIL_REASON,
                                FAIL_REASON_ATTR, FULL_RESULTS, MODEL_SIZE_ATTR, PARAMETERS,
                                TIMING, model_size_text, one_line, significant)
from search.train.checkpoint import Checkpoint
from search.train.data import Dataset
from search.train.gpu_share import stuck_memory
from search.train.models import build, first_layer_weight, parameter_count
from search.progress import Progress
from search.pruning import PRUNE_REASON, why_pruned
from search.train.trainer import Diverged, TrainResult, train
from search.settings import StudySpec
from storage import (Store, StorageFailure, StorageFault, StorageUnavailable, TrialWriter,
                     folder_fault)

WEIGHT_ARTIFACT = "first_layer.npy"
PICTURE_ARTIFACT = "first_layer.png"
GRAY_PICTURE_ARTIFACT = "first_layer_gray.png"  # ResNet18 only
VALUE_NOTE_ATTR = "value_note"  # a pruned trial's: its Value is its last epoch's, not its best
INTERRUPT_FLUSH_SECONDS = 2.0   # Ctrl-C: how long the last epochs may take to land
PRUNE_WAIT_SECONDS = 1.0        # how long an epoch waits for its writes before the pruner
LAND_MARGIN_SECONDS = 5.0       # beyond the storage's patience, for the writes in the queue
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class Runtime:
    """What one process gives its trials besides the study's spec."""
    store: Store                      # the study's storage, artifacts and checkpoints beside it
    data: Dataset                     # loaded once per process, already on `device`
    device: torch.device
    study_uid: str = "study"          # a checkpoint belongs to one study of one storage
    checkpoint_every: float | None = None   # seconds between saves; None: no checkpoints
    capture: str = "auto"             # CUDA graphs: auto (on CUDA) or off (train/capture.py)
    shared_by: int = 1                # trials training on this device at once (timings)
    should_stop: Callable[[], bool] | None = None   # Ctrl-C / SIGTERM noted: read every step


class Objective:
    """objective(trial) -> the trial's best validation accuracy (Optuna's objective)."""

    def __init__(self, spec: StudySpec, runtime: Runtime):
        self.spec, self.run = spec, runtime
        self.progress = Progress(quiet=True, tty=False)  # the run loop gives its own

    def __call__(self, trial: optuna.Trial) -> float:
        spec, run = self.spec, self.run
        config = spec.config(trial)
        original = trained_twin(trial)
        if original is not None:  # trained already: its result answers, nothing is trained
            return answer_from(trial, original)
        run.store.set_system_attr(trial, CONFIG, _jsonable(config.as_dict()))
        torch.manual_seed(spec.seed)  # same initial weights for every trial: only params differ
        model = build(spec.model, config)
        size = parameter_count(model)
        run.store.set_system_attr(trial, PARAMETERS, size)         # the count, for reports
        trial.set_user_attr(MODEL_SIZE_ATTR, model_size_text(size))  # in words, for the page
        checkpoint = self._checkpoint(trial)
        # A retry inherits the epochs its first try reported; it reports each epoch its
        # checkpoint holds (or it trains) that the storage lacks, once.
        reported = set(run.store.trial(trial).intermediate_values)
        # Per-epoch writes go through a background writer: while the storage is away (a
        # database restart) training goes on, and they land in order once it is back.
        writer = run.store.writer(trial)

        def report_new_epochs(result: TrainResult) -> None:
            for e in result.epochs:
                if e.epoch not in reported:
                    writer.report(e.epoch, e.val_acc)
                    reported.add(e.epoch)

        pruned_because: list[str] = []   # the pruner's numbers, where it said stop

        def on_epoch(result: TrainResult) -> bool:
            last = result.epochs[-1]
            self.progress.epoch_done(last.epoch, config.epochs, last.val_acc)
            if last.epoch >= config.epochs:
                self.progress.finishing("testing the best epoch's weights")
            report_new_epochs(result)
            writer.set_system_attr(CURVES, result.curves())  # live, for the figures
            # The pruner compares this trial's epochs, read from the storage, with the other
            # trials': judge only once they have landed there (milliseconds, unless the
            # storage is away: then training goes on and the next epoch is judged).
            if last.epoch >= config.epochs:   # stopping now saves nothing: it completes
                return False
            if not writer.flush(timeout=PRUNE_WAIT_SECONDS):
                return False
            stored = run.store.trial(trial)                      # as trial.should_prune()
            if not trial.study.pruner.prune(trial.study, stored):  # does, read fresh
                return False
            pruned_because.append(why_pruned(trial.study, stored))
            return True

        failure = None
        self.progress.trial_started(trial.number, config.epochs)
        try:
            result = train(model, config, run.data, device=run.device, seed=spec.seed,
                           on_epoch=on_epoch, on_step=self.progress.step,
                           checkpoint=checkpoint, capture=run.capture,
                           should_stop=run.should_stop)
            report_new_epochs(result)  # a retry whose checkpoint held every epoch trains none
            _land(writer, run.store)
        except (StorageFault, optuna.exceptions.UpdateFinishedTrialError):
            # The storage is gone (one line and exit 1, search/run.py), or another process
            # took this trial for dead and failed it: nothing more to record here.
            writer.close(timeout=0)
            raise
        except Diverged as error:
            _land(writer, run.store)
            trial.set_user_attr("diverged", one_line(str(error)))
            # The curves of the finished epochs are already stored by on_epoch; say how many.
            run.store.set_system_attr(trial, EPOCHS_RUN, len(reported))
            self._explain_pruned_value(trial)
            reason = f"diverged: {error}"
            model = None  # the raised exception's traceback keeps this frame, not the model
            self._cleanup(checkpoint)
            raise optuna.TrialPruned(reason) from None
        except Exception as error:
            # Out of memory (batch 1024 on a small GPU) or any other error: fail this trial
            # with its reason, give the memory back, and let the study go on.
            _land(writer, run.store)
            reason = f"{type(error).__name__}: {error}"
            run.store.set_system_attr(trial, FAIL_REASON, reason[:500])  # the whole story
            trial.set_user_attr(FAIL_REASON_ATTR, one_line(reason))       # the trial page's
            # Its traceback holds train()'s frame, so the model, gradients and optimizer
            # state: drop it, and clean up outside this block, or the memory stays taken.
            failure = (BrokenDevice(reason) if broken_device(error)
                       else error.with_traceback(None))
        except KeyboardInterrupt:
            # Ctrl-C / SIGTERM: the trial ends FAIL and is queued again (search/run.py); its
            # retry resumes from the checkpoint, so it stays.
            writer.flush(timeout=INTERRUPT_FLUSH_SECONDS)
            writer.close(timeout=0)
            self._cleanup(None)
            raise
        finally:
            writer.close(timeout=0)
        if failure is not None:
            model = None
            self._cleanup(checkpoint)
            stuck = (stuck_memory(run.device) if isinstance(failure, torch.OutOfMemoryError)
                     else None)
            if stuck is not None:   # every later trial here would run out of memory too
                raise BrokenDevice(f"{reason}; {stuck}", retry=False)
            raise failure
        self.progress.finishing(("pruned; " if result.stopped_early else "")
                                + "saving curves and first-layer pictures")
        self._save_summary(trial, result)
        self._save_pictures(trial, model, result)  # the best epoch's weights, pruned or not
        model = None  # a raised TrialPruned's traceback keeps this frame, not the model
        self._cleanup(checkpoint)
        if result.stopped_early:
            reason = (pruned_because[-1] if pruned_because
                      else f"pruned after epoch {result.epochs[-1].epoch}")
            trial.set_user_attr(PRUNE_REASON, reason)
            self._explain_pruned_value(trial)
            raise optuna.TrialPruned(reason)
        return result.best_val_acc

    def _save_summary(self, trial: optuna.Trial, result: TrainResult) -> None:
        store, curves = self.run.store, result.curves()
        store.set_system_attr(trial, CURVES, curves)
        store.set_system_attr(trial, EPOCHS_RUN, len(result.epochs))
        # What a person reads on the trial page: user attributes (trial_data.RESULTS), rounded
        # to 4 significant digits; the reports read the full values (FULL_RESULTS).
        results = {"max_val_acc": max(curves["val_acc"]),
                   "max_train_acc": max(curves["train_acc"])}
        if result.test_acc is not None:
            results.update(test_acc=result.test_acc, test_loss=result.test_loss)
        store.set_system_attr(trial, FULL_RESULTS, results)
        for name, value in results.items():
            trial.set_user_attr(name, significant(value))
        trial.set_user_attr("best_epoch", result.best_epoch)
        # Per-epoch means without the warm-up epochs (the first one autotunes kernels and
        # fills caches; so does the first after a resume), which are kept apart. Seconds.
        timing = {"avg_train_seconds": result.steady_train_seconds,
                  "avg_val_seconds": result.steady_val_seconds,
                  "first_epoch_seconds": result.first_epoch_seconds,
                  "test_seconds": result.test_seconds,
                  "shared_by": self.run.shared_by}   # trials on this device at once
        store.set_system_attr(trial, TIMING, {k: v for k, v in timing.items() if v is not None})
        capture = {"seconds": result.capture_seconds,    # CUDA graphs: their one-off cost,
                   "failure": result.capture_failure}    # or why the trial trained eagerly
        if any(v is not None for v in capture.values()):
            store.set_system_attr(trial, CAPTURE,
                                  {k: v for k, v in capture.items() if v is not None})

    def _explain_pruned_value(self, trial: optuna.Trial) -> None:
        """Optuna gives a pruned trial the value of its last epoch, while its prune reason
        names its best: say so on its page when the two differ (the sampler and the pruner
        still see what Optuna records)."""
        note = pruned_value_note(self.run.store.trial(trial))
        if note:
            trial.set_user_attr(VALUE_NOTE_ATTR, note)

    def _save_pictures(self, trial: optuna.Trial, model: torch.nn.Module,
                       result: TrainResult) -> None:
        """The best epoch's first-layer weight (.npy) and its pictures (.png), and the
        trial's learning curves (.svg, reports/curve_picture.py), as artifacts linked to the
        trial by Optuna itself (reports/trial_data.artifact_id finds them)."""
        name = self.spec.model
        weight = first_layer_weight(name, model).detach().float().cpu().numpy()
        with tempfile.TemporaryDirectory() as folder:
            try:
                paths = _render_first_layer(name, weight, Path(folder))
                paths += _render_curves(trial.number, result, Path(folder))
            except OSError as error:   # a full temporary disk (TMPDIR): one line, exit 1
                raise StorageFailure(
                    f"{folder_fault('temporary', Path(folder).parent, error)} while saving "
                    f"the first-layer pictures of trial {trial.number}") from None
            for path in paths:
                # Whole or absent; a full disk is one line naming the folder (exit 1).
                self.run.store.artifacts().upload(trial, path)   # Optuna records its id

    def _checkpoint(self, trial: optuna.Trial) -> Checkpoint | None:
        """One checkpoint per original trial, so a retry of a killed trial finds it."""
        run = self.run
        if run.checkpoint_every is None:
            return None
        path = checkpoint_path(run.store, run.study_uid, trial.study, run.store.trial(trial))
        return Checkpoint(path, every_seconds=run.checkpoint_every,
                          identity={"study": run.study_uid})

    @staticmethod
    def _cleanup(checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            checkpoint.remove()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _render_first_layer(name: str, weight: np.ndarray, folder: Path) -> list[Path]:
    """The first-layer weight (.npy) and its pictures (.png), as files in `folder`."""
    npy = folder / WEIGHT_ARTIFACT
    np.save(npy, weight)
    paths = [npy, save_first_layer_picture(name, weight, folder / PICTURE_ARTIFACT)]
    if name == "resnet18":  # the report's Figure 17: mean over input channels
        paths.append(save_first_layer_picture(name, weight, folder / GRAY_PICTURE_ARTIFACT,
                                              grayscale=True))
    return paths


def _render_curves(number: int, result: TrainResult, folder: Path) -> list[Path]:
    """The trial's learning curves as SVG files in `folder` (reports/curve_picture.py)."""
    paths = []
    for name, svg in trial_pictures(result.curves(), number, result.best_epoch).items():
        paths.append(folder / name)
        paths[-1].write_text(svg, encoding="utf-8")
    return paths


def pruned_value_note(trial: optuna.trial.FrozenTrial) -> str | None:
    """For a trial about to be told PRUNED: Optuna will record the val acc of its last epoch
    as its value; when its best epoch was better, one line saying both, else None."""
    reported = {e: v for e, v in trial.intermediate_values.items() if not math.isnan(v)}
    last = trial.last_step
    if last not in reported:   # no epoch, or a NaN last one: Optuna records no value
        return None
    best_epoch = max(reported, key=lambda e: (reported[e], -e))   # the first of equal bests
    if significant(reported[last]) == significant(reported[best_epoch]):
        return None
    return (f"Value {reported[last]:.4g} is epoch {last}'s val acc: Optuna keeps a pruned "
            f"trial's last; its best: {reported[best_epoch]:.4g}, epoch {best_epoch}")


class BrokenDevice(RuntimeError):
    """A CUDA error other than out of memory (a device-side assert, an illegal address): the
    process's CUDA context is broken and every later trial in it would fail too. Also an
    out-of-memory error that left this process's memory stuck (search/train/gpu_share.py).

    `retry`: whether the trial is run again (by another process): yes after a CUDA error,
    which says nothing of the trial; no when the trial asked for more memory than it may."""

    def __init__(self, reason: str, retry: bool = True):
        super().__init__(reason)
        self.retry = retry


def broken_device(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return False  # this trial's batch was too big: the next trial may well fit
    text = f"{type(error).__name__}: {error}"
    return type(error).__name__ == "AcceleratorError" or any(
        mark in text for mark in ("CUDA error", "device-side assert", "CUBLAS_STATUS",
                                  "CUDNN_STATUS", "illegal memory access"))


def trained_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The study's finished (COMPLETE or PRUNED) trained trial with the same parameters, if
    any. The report's spaces are lists, and samplers propose a finished point again (TPE did
    in a 30-trial MLP search): a repeat would cost a trial's training for nothing."""
    for past in trial.study.get_trials(deepcopy=False, states=FINISHED):
        if past.params == trial.params and REPEAT_ATTR not in past.user_attrs:
            return past
    return None


def answer_from(trial: optuna.Trial, original: optuna.trial.FrozenTrial) -> float:
    """Answer a repeat with its original's result: a COMPLETE one's value, which the sampler
    learns from, or PRUNED (no epochs reported: the pruner's medians count the original
    once). Marked as a repeat, the trial is left out of the study's target and the tables."""
    trial.set_user_attr(REPEAT_ATTR, original.number)
    if original.state == optuna.trial.TrialState.COMPLETE:
        return original.value
    raise optuna.TrialPruned(f"repeat of trial {original.number}, which was pruned")


def _land(writer: TrialWriter, store: Store) -> None:
    """Wait until the trial's queued writes are in the storage; the storage's patience bounds
    the wait (it raises StorageUnavailable past it, through the writer)."""
    if not writer.flush(timeout=store.patience + LAND_MARGIN_SECONDS):
        raise StorageUnavailable(f"storage {store.name} did not take the trial's writes "
                                 f"within {store.patience:g} s")


def checkpoint_path(store: Store, study_uid: str, study: optuna.Study,
                    frozen: optuna.trial.FrozenTrial) -> Path:
    """<checkpoints>/<study uid>-trial<id of the first try>.pt: the study's unique id (made
    with the study) keeps a new study in a new file from ever loading an old study's."""
    first = store.first_try(study, frozen)
    return store.checkpoint_folder / f"{study_uid}-trial{first._trial_id}.pt"


def sweep_checkpoints(store: Store, study_uid: str, study: optuna.Study) -> int:
    """Remove the study's checkpoints that no queued or running retry will read again
    (a try interrupted for the last time, a worker killed on its last try)."""
    folder = store.checkpoint_folder
    if not folder.is_dir():
        return 0
    live = {checkpoint_path(store, study_uid, study, t).name
            for t in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,
                                              optuna.trial.TrialState.WAITING))}
    removed = 0
    for path in folder.glob(f"{study_uid}-trial*.pt*"):   # .pt, .pt.best<N>, .partial
        if path.name[:path.name.rindex(".pt") + 3] not in live:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _jsonable(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
