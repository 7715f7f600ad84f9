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
from search.checkpoint import Checkpoint
from search.data import Dataset
from search.models import build, first_layer_weight, parameter_count
from search.trainer import Diverged, TrainResult, train
from spaces.space import Space

WEIGHT_ARTIFACT = "first_layer.npy"
PICTURE_ARTIFACT = "first_layer.png"
GRAY_PICTURE_ARTIFACT = "first_layer_gray.png"  # ResNet18 only


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


class Objective:
    def __init__(self, settings: ObjectiveSettings):
        self.s = settings

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
        reported = len(trial.user_attrs.get("curves", {}).get("val_acc", []))

        def on_epoch(result: TrainResult) -> bool:
            nonlocal reported
            for e in result.epochs[reported:]:  # a resumed trial reports only new epochs
                trial.report(e.val_acc, e.epoch)
            reported = len(result.epochs)
            trial.set_user_attr("curves", result.curves())  # live in the dashboard
            return trial.should_prune()

        failure = None
        try:
            result = train(model, config, s.data, device=s.device, seed=s.seed,
                           on_epoch=on_epoch, checkpoint=checkpoint)
        except Diverged as error:
            trial.set_user_attr("diverged", str(error))
            # The curves of the finished epochs are already stored by on_epoch; say how many.
            trial.set_user_attr("epochs_run", reported)
            self._cleanup(checkpoint)
            raise optuna.TrialPruned(f"diverged: {error}") from None
        except Exception as error:
            # Out of memory (batch 1024 on a small GPU) or any other error: fail this trial
            # with its reason, give the memory back, and let the study go on.
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:500])
            # Its traceback holds train()'s frame, so the model, gradients and optimizer
            # state: drop it, and clean up outside this block, or the memory stays taken.
            failure = error.with_traceback(None)
        except KeyboardInterrupt:
            # Ctrl-C / SIGTERM: the trial ends FAIL and is never retried, so its checkpoint
            # would only take disk space. (A SIGKILLed worker keeps it for the retry.)
            self._cleanup(checkpoint)
            raise
        if failure is not None:
            del model
            self._cleanup(checkpoint)
            raise failure
        self._save_summary(trial, result)
        self._save_first_layer(trial, model)
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
        trial.set_user_attr("avg_train_seconds", float(np.mean(curves["train_seconds"])))
        trial.set_user_attr("avg_val_seconds", float(np.mean(curves["val_seconds"])))
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
                artifact_id = optuna.artifacts.upload_artifact(
                    artifact_store=self.s.artifact_store, file_path=str(path),
                    study_or_trial=trial)
                trial.set_user_attr(f"artifact:{path.name}", artifact_id)

    def _checkpoint_path(self, trial: optuna.Trial) -> Checkpoint | None:
        """One checkpoint per original trial, so a retry of a killed trial finds it."""
        if self.s.checkpoint_dir is None:
            return None
        frozen = trial.study._storage.get_trial(trial._trial_id)  # Trial hides system_attrs
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)
        root = history[0] if history else trial.number
        study = "".join(c if c.isalnum() or c in "-_=." else "_" for c in trial.study.study_name)
        return Checkpoint(Path(self.s.checkpoint_dir) / f"{study}-trial{root}.pt",
                          every_seconds=0, identity={"config": trial.user_attrs["config"]})

    @staticmethod
    def _cleanup(checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            checkpoint.remove()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _jsonable(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
