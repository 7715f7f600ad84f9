"""The objective: the ONLY module that touches an optuna.Trial during training.

suggest -> build -> train (trial.report / should_prune each epoch) -> user_attrs + artifacts.
Value: the best validation accuracy over the epochs. Every finished or pruned trial keeps its
per-epoch curves and summary in user_attrs, so reports read everything from the storage.
"""
from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import optuna
import torch

from reports.pictures import save_first_layer_picture
from search.train.checkpoint import Checkpoint
from search.train.data import Dataset
from search.train.gpu_share import stuck_memory
from search.train.models import build, first_layer_weight, parameter_count
from search.progress import Progress
from search.train.trainer import Diverged, TrainResult, train
from spaces import get_space
from spaces.space import Space
from storage import (DEFAULT_PATIENCE_SECONDS, StorageFailure, StorageFault,
                     StorageUnavailable, TrialWriter, artifact_dir, artifact_store)

WEIGHT_ARTIFACT = "first_layer.npy"
PICTURE_ARTIFACT = "first_layer.png"
GRAY_PICTURE_ARTIFACT = "first_layer_gray.png"  # ResNet18 only
INTERRUPT_FLUSH_SECONDS = 2.0   # Ctrl-C: how long the last epochs may take to land
PRUNE_WAIT_SECONDS = 1.0        # how long an epoch waits for its writes before the pruner
LAND_MARGIN_SECONDS = 5.0       # beyond the storage's patience, for the writes in the queue


@dataclass
class ObjectiveSettings:
    model: str
    space: Space
    data: Dataset                     # loaded once per process, already on `device`
    device: torch.device
    seed: int = 0
    epochs: int | None = None         # --epochs; None keeps the space's default
    fixed: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, list] | None = None
    space_kind: str = "report"
    artifact_store: Any = None        # optuna artifact store, or None to skip pictures
    checkpoint_dir: Path | None = None
    study_uid: str = "study"          # a checkpoint belongs to one study of one storage
    checkpoint_every: float | None = 0.0   # seconds between saves; None: no checkpoints
    device_shared_by: int = 1         # trials training on this device at once (timings)
    capture: str = "auto"             # CUDA graphs: auto (on CUDA) or off (search/train/capture.py)


class Objective:
    def __init__(self, settings: ObjectiveSettings):
        self.s = settings
        self.progress = Progress(quiet=True, tty=False)  # the run loop gives its own

    @classmethod
    def for_run(cls, settings, study_uid: str, data: Dataset, device: torch.device,
                retries: bool) -> "Objective":
        """The objective of one process (settings: its RunSettings): data already on
        `device`, artifacts beside the storage. `retries`: the storage has a heartbeat, so a
        killed trial is retried and checkpoints are worth writing."""
        spec = settings.spec
        return cls(ObjectiveSettings(
            model=spec.model, space=get_space(spec.model), data=data, device=device,
            seed=spec.seed, epochs=spec.epochs, fixed=spec.fixed, grid=spec.grid,
            space_kind=spec.space, artifact_store=artifact_store(settings.storage),
            checkpoint_dir=artifact_dir(settings.storage) / "checkpoints",
            study_uid=study_uid,
            checkpoint_every=settings.checkpoint_every if retries else None,
            device_shared_by=settings.device_shared_by, capture=settings.capture))

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.s
        fixed = dict(s.fixed)
        if s.epochs is not None:
            fixed.setdefault("epochs", s.epochs)
        config = s.space.suggest(trial, fixed, s.space_kind, s.grid)
        trial.set_user_attr("config", _jsonable(config.as_dict()))
        torch.manual_seed(s.seed)  # same initial weights for every trial: only params differ
        model = build(s.model, config)
        trial.set_user_attr("parameters", parameter_count(model))
        checkpoint = self._checkpoint_path(trial)
        # A retry inherits the epochs its first try reported; it reports each epoch its
        # checkpoint holds (or it trains) that the storage lacks, once.
        reported = set(trial.study._storage.get_trial(trial._trial_id).intermediate_values)
        # Per-epoch writes go through a background writer: while the storage is away (a
        # database restart) training goes on, and they land in order once it is back.
        writer = TrialWriter(trial.study._storage, trial._trial_id)

        def report_new_epochs(result: TrainResult) -> None:
            for e in result.epochs:
                if e.epoch not in reported:
                    writer.report(e.epoch, e.val_acc)
                    reported.add(e.epoch)

        def on_epoch(result: TrainResult) -> bool:
            last = result.epochs[-1]
            self.progress.epoch_done(last.epoch, config.epochs, last.val_acc)
            report_new_epochs(result)
            writer.set_user_attr("curves", result.curves())  # live in the dashboard
            # The pruner compares this trial's epochs, read from the storage, with the other
            # trials': judge only once they have landed there (milliseconds, unless the
            # storage is away: then training goes on and the next epoch is judged).
            if not writer.flush(timeout=PRUNE_WAIT_SECONDS):
                return False
            stored = trial.study._storage.get_trial(trial._trial_id)  # trial.should_prune()
            return trial.study.pruner.prune(trial.study, stored)      # reads its own cache

        failure = None
        self.progress.trial_started(trial.number, config.epochs)
        try:
            result = train(model, config, s.data, device=s.device, seed=s.seed,
                           on_epoch=on_epoch, on_step=self.progress.step,
                           checkpoint=checkpoint, capture=s.capture)
            report_new_epochs(result)  # a retry whose checkpoint held every epoch trains none
            _land(writer)
        except (StorageFault, optuna.exceptions.UpdateFinishedTrialError):
            # The storage is gone (one line and exit 1, search/run.py), or another process
            # took this trial for dead and failed it: nothing more to record here.
            writer.close(timeout=0)
            raise
        except Diverged as error:
            _land(writer)
            trial.set_user_attr("diverged", str(error))
            # The curves of the finished epochs are already stored by on_epoch; say how many.
            trial.set_user_attr("epochs_run", len(reported))
            reason = f"diverged: {error}"
            model = None  # the raised exception's traceback keeps this frame, not the model
            self._cleanup(checkpoint)
            raise optuna.TrialPruned(reason) from None
        except Exception as error:
            # Out of memory (batch 1024 on a small GPU) or any other error: fail this trial
            # with its reason, give the memory back, and let the study go on.
            _land(writer)
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("fail_reason", reason[:500])
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
            stuck = (stuck_memory(s.device) if isinstance(failure, torch.OutOfMemoryError)
                     else None)
            if stuck is not None:   # every later trial here would run out of memory too
                raise BrokenDevice(f"{reason}; {stuck}", retry=False)
            raise failure
        self._save_summary(trial, result)
        self._save_first_layer(trial, model)  # the best epoch's weights, pruned or not
        model = None  # a raised TrialPruned's traceback keeps this frame, not the model
        self._cleanup(checkpoint)
        if result.stopped_early:
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs[-1].epoch}")
        return result.best_val_acc

    def _save_summary(self, trial: optuna.Trial, result: TrainResult) -> None:
        curves = result.curves()
        trial.set_user_attr("curves", curves)
        trial.set_user_attr("epochs_run", len(result.epochs))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("max_train_acc", max(curves["train_acc"]))
        trial.set_user_attr("max_val_acc", max(curves["val_acc"]))
        # Per-epoch means without the warm-up epochs (the first one autotunes kernels and
        # fills caches; so does the first after a resume), which are kept apart.
        trial.set_user_attr("avg_train_seconds", result.steady_train_seconds)
        trial.set_user_attr("avg_val_seconds", result.steady_val_seconds)
        trial.set_user_attr("first_epoch_seconds", result.first_epoch_seconds)
        trial.set_user_attr("timing_shared_by", self.s.device_shared_by)
        if result.capture_seconds is not None:   # CUDA graphs: their one-off cost, or why not
            trial.set_user_attr("capture_seconds", result.capture_seconds)
        if result.capture_failure is not None:
            trial.set_user_attr("capture_failure", result.capture_failure)
        if result.test_acc is not None:
            trial.set_user_attr("test_acc", result.test_acc)
            trial.set_user_attr("test_loss", result.test_loss)
            trial.set_user_attr("test_seconds", result.test_seconds)

    def _save_first_layer(self, trial: optuna.Trial, model: torch.nn.Module) -> None:
        """The best epoch's first-layer weight (.npy) and its pictures (.png) as artifacts."""
        if self.s.artifact_store is None:
            return
        weight = first_layer_weight(self.s.model, model).detach().float().cpu().numpy()
        with tempfile.TemporaryDirectory() as folder:
            npy = Path(folder) / WEIGHT_ARTIFACT
            np.save(npy, weight)
            paths = [npy, save_first_layer_picture(self.s.model, weight,
                                                   Path(folder) / PICTURE_ARTIFACT)]
            if self.s.model == "resnet18":  # the report's Figure 17: mean over input channels
                paths.append(save_first_layer_picture(
                    self.s.model, weight, Path(folder) / GRAY_PICTURE_ARTIFACT, grayscale=True))
            for path in paths:
                try:
                    artifact_id = optuna.artifacts.upload_artifact(
                        artifact_store=self.s.artifact_store, file_path=str(path),
                        study_or_trial=trial)
                except OSError as error:  # a full or read-only disk: no trial can finish
                    raise StorageFailure(f"artifacts {getattr(error, 'filename', None) or ''}"
                                         f": {error.strerror or error}") from None
                trial.set_user_attr(f"artifact:{path.name}", artifact_id)

    def _checkpoint_path(self, trial: optuna.Trial) -> Checkpoint | None:
        """One checkpoint per original trial, so a retry of a killed trial finds it."""
        if self.s.checkpoint_dir is None or self.s.checkpoint_every is None:
            return None
        path = checkpoint_path(self.s.checkpoint_dir, self.s.study_uid, trial.study,
                               trial.study._storage.get_trial(trial._trial_id))
        return Checkpoint(path, every_seconds=self.s.checkpoint_every,
                          identity={"study": self.s.study_uid})

    @staticmethod
    def _cleanup(checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            checkpoint.remove()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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


def _land(writer: TrialWriter) -> None:
    """Wait until the trial's queued writes are in the storage; the storage's patience bounds
    the wait (it raises StorageUnavailable past it, through the writer)."""
    backend = getattr(writer.storage, "_backend", writer.storage)
    patience = getattr(backend, "patience", DEFAULT_PATIENCE_SECONDS)
    if not writer.flush(timeout=patience + LAND_MARGIN_SECONDS):
        raise StorageUnavailable(f"storage {getattr(backend, 'display_name', '')} did not take "
                                 f"the trial's writes within {patience:g} s")


def checkpoint_path(folder: Path, study_uid: str, study: optuna.Study,
                    frozen: optuna.trial.FrozenTrial) -> Path:
    """<folder>/<study uid>-trial<id of the first try>.pt: the study's unique id (made with the
    study) keeps a new study in a new file from ever loading an old study's checkpoint."""
    history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    first = (study._storage.get_trial_id_from_study_id_trial_number(study._study_id, history[0])
             if history else frozen._trial_id)
    return Path(folder) / f"{study_uid}-trial{first}.pt"


def sweep_checkpoints(folder: Path | None, study_uid: str, study: optuna.Study) -> int:
    """Remove the study's checkpoints that no queued or running retry will read again
    (a try interrupted for the last time, a worker killed on its last try)."""
    if folder is None or not Path(folder).is_dir():
        return 0
    live = {checkpoint_path(folder, study_uid, study, t).name
            for t in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,
                                              optuna.trial.TrialState.WAITING))}
    removed = 0
    for path in Path(folder).glob(f"{study_uid}-trial*.pt*"):   # .pt, .pt.best<N>, .partial
        if path.name[:path.name.rindex(".pt") + 3] not in live:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _jsonable(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
