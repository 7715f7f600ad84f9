"""Open or create a study (sampler + pruner recorded) and run its trials in this process.

A study remembers the model, space, --set values and grid it was made with (user_attrs), and
refuses to resume with others: mixing spaces in one study would mislead its sampler.
"""
from __future__ import annotations

import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from search.data import make_dataset
from search.interrupts import Interrupts, fail_if_running, hide_interrupt_traceback
from search.objective import Objective, ObjectiveSettings, _jsonable
from search.progress import print_summary, print_trial
from search.trainer import pick_device
from spaces import get_space
from storage import DEFAULT_STORAGE, artifact_dir, artifact_store, open_storage, redact


class StudyMismatch(ValueError):
    """The named study exists but was made for another model or space."""


@dataclass
class SearchSettings:
    model: str
    trials: int | None = None          # None with --grid: every grid point not yet done
    storage: str = DEFAULT_STORAGE
    study: str | None = None
    epochs: int = 30
    data: str = "cifar10"
    data_dir: str = "data"
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 5000
    device: str = "auto"
    seed: int = 0
    sampler: str = "tpe"
    pruner: str = "median"
    space: str = "report"
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] | None = None
    timeout: float | None = None
    enqueue_report: bool = False
    workers: int = 1

    @property
    def study_name(self) -> str:
        return self.study or default_study_name(self.model, self.fixed, self.grid)


def default_study_name(model: str, fixed: dict, grid: dict | None) -> str:
    """resnet18; a grid gets its own: resnet18-optimizer=adam-grid-lr."""
    if not grid:
        return model
    parts = [model, *(f"{k}={v}" for k, v in sorted(fixed.items()) if k != "epochs"),
             "grid-" + "-".join(sorted(grid))]
    return "-".join(parts)


def make_sampler(settings: SearchSettings):
    """The sampler and the settings recorded with the study, so studies stay comparable."""
    seed = settings.seed
    if settings.grid:
        return optuna.samplers.GridSampler(settings.grid, seed=seed), {"name": "grid", "seed": seed}
    if settings.sampler == "tpe":
        pinned = dict(n_startup_trials=10, n_ei_candidates=24, multivariate=True,
                      constant_liar=True, group=False)
        return (optuna.samplers.TPESampler(seed=seed, **pinned),
                {"name": "tpe", "seed": seed, **pinned})
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed), {"name": "random", "seed": seed}
    if settings.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed), {"name": "gp", "seed": seed}
    raise ValueError(f"unknown sampler {settings.sampler!r}")


def make_pruner(settings: SearchSettings):
    epochs = settings.fixed.get("epochs", settings.epochs)
    if settings.pruner == "median":
        # Warm-up: the first epochs of any run are noisy; judge a trial from epoch ~epochs/5.
        pinned = dict(n_startup_trials=5, n_warmup_steps=max(1, min(5, epochs // 5)),
                      interval_steps=1)
        return optuna.pruners.MedianPruner(**pinned), {"name": "median", **pinned}
    if settings.pruner == "hyperband":
        pinned = dict(min_resource=1, max_resource=epochs, reduction_factor=3)
        return optuna.pruners.HyperbandPruner(**pinned), {"name": "hyperband", **pinned}
    if settings.pruner == "none":
        return optuna.pruners.NopPruner(), {"name": "none"}
    raise ValueError(f"unknown pruner {settings.pruner!r}")


def identity(settings: SearchSettings) -> dict[str, Any]:
    """What a study is made of; resuming must ask for the same."""
    return {"model": settings.model, "space": settings.space,
            "fixed": _jsonable({k: v for k, v in settings.fixed.items() if k != "epochs"}),
            "grid": settings.grid or None}


def open_study(settings: SearchSettings, storage=None) -> optuna.Study:
    storage = storage or open_storage(settings.storage)
    sampler, sampler_attrs = make_sampler(settings)
    pruner, pruner_attrs = make_pruner(settings)
    study = optuna.create_study(storage=storage, study_name=settings.study_name,
                                sampler=sampler, pruner=pruner, direction="maximize",
                                load_if_exists=True)
    wanted = identity(settings)
    if "model" not in study.user_attrs:
        # epochs and data_options let `optuna-search worker` join with the same run settings
        data_options = {"train_subset": settings.train_subset,
                        "test_subset": settings.test_subset, "val_size": settings.val_size}
        for key, value in {**wanted, "sampler": sampler_attrs, "pruner": pruner_attrs,
                           "seed": settings.seed, "data": settings.data,
                           "epochs": settings.fixed.get("epochs", settings.epochs),
                           "data_options": data_options}.items():
            study.set_user_attr(key, value)
    else:
        have = {k: study.user_attrs.get(k) for k in wanted}
        if have != wanted:
            raise StudyMismatch(
                f"study {settings.study_name!r} was made with {_describe(have)}, not "
                f"{_describe(wanted)}; pick another name with --study")
    return study


def _describe(ident: dict) -> str:
    text = f"model={ident['model']} space={ident['space']}"
    if ident["fixed"]:
        text += " set " + ",".join(f"{k}={v}" for k, v in ident["fixed"].items())
    if ident["grid"]:
        text += " grid " + ";".join(f"{k}={v}" for k, v in ident["grid"].items())
    return text


def remaining_grid_points(study: optuna.Study, grid: dict[str, list]) -> int:
    """Grid points with no COMPLETE or PRUNED trial yet (failed ones run again)."""
    done = {tuple(t.params.get(k) for k in sorted(grid))
            for t in study.get_trials(deepcopy=False,
                                      states=(TrialState.COMPLETE, TrialState.PRUNED))}
    return math.prod(len(v) for v in grid.values()) - len(done)


def requeue_failed_grid_points(study: optuna.Study, grid: dict[str, list]) -> int:
    """Queue again each grid point whose trials all failed (out of memory, Ctrl-C).

    GridSampler counts a failed trial as visited: left alone, it would re-run a random point,
    maybe a finished one, and never the failed one. A WAITING copy with the failed trial's
    params and grid id runs exactly that point.
    """
    def point(trial):
        return tuple(trial.params.get(k) for k in sorted(grid))

    trials = study.get_trials(deepcopy=False)
    settled = {point(t) for t in trials if t.state != TrialState.FAIL}
    requeued = 0
    for trial in trials:
        if trial.state != TrialState.FAIL or point(trial) in settled \
                or "grid_id" not in trial.system_attrs:
            continue
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            system_attrs={k: trial.system_attrs[k] for k in ("grid_id", "search_space")}))
        settled.add(point(trial))
        requeued += 1
    return requeued


def enqueue_published(study: optuna.Study, settings: SearchSettings) -> int:
    """Enqueue the report's top configurations that fit this space, once per study."""
    rows = get_space(settings.model).enqueue_params(settings.space)
    # A row that contradicts a --set value is another configuration, not a warm start.
    rows = [{k: v for k, v in r.items() if k not in settings.fixed} for r in rows
            if all(r.get(k, v) == v for k, v in settings.fixed.items())]
    for row in rows:
        study.enqueue_trial(row, skip_if_exists=True)
    return len(rows)


def make_objective(settings: SearchSettings, data, device) -> Objective:
    """The objective of one process: data already on `device`, artifacts beside the storage."""
    return Objective(ObjectiveSettings(
        model=settings.model, space=get_space(settings.model), data=data, device=device,
        seed=settings.seed, epochs=settings.fixed.get("epochs", settings.epochs),
        fixed=settings.fixed, grid=settings.grid, space_kind=settings.space,
        artifact_store=artifact_store(settings.storage),
        checkpoint_dir=artifact_dir(settings.storage) / "checkpoints"))


def run_search(settings: SearchSettings, out=None, data=None) -> int:
    """Load the data once, open the study, run the trials; 0 on success, 130 on Ctrl-C.

    `data` (a search.data.Dataset) skips the load: `reproduce` loads once for five studies.
    With settings.workers > 1, worker processes run the trials (search.workers).
    """
    if settings.workers > 1:
        from search.workers import run_workers
        return run_workers(settings, out=out)
    out = sys.stdout if out is None else out  # looked up now: tests and callers swap stdout
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    logging.getLogger("optuna.study._optimize").addFilter(hide_interrupt_traceback)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if data is None:
        data = make_dataset(settings.data, settings.data_dir, seed=settings.seed,
                            val_size=settings.val_size, train_subset=settings.train_subset,
                            test_subset=settings.test_subset)
    device = pick_device(settings.device)
    data = data.to(device)
    study = open_study(settings)
    print(f"study {settings.study_name!r} in {redact(settings.storage)}: "
          f"{len(study.trials)} trials so far; data {data.describe()}; device {device}",
          file=out, flush=True)
    n_trials = settings.trials
    if settings.grid:
        left = remaining_grid_points(study, settings.grid)
        n_trials = left if n_trials is None else min(n_trials, left)
        if n_trials == 0:
            print("every grid point is already done; nothing to run", file=out)
            return print_summary(study, settings, out)
        if requeue_failed_grid_points(study, settings.grid):
            print("failed grid points are queued to run again", file=out)
    if settings.enqueue_report:
        print(f"enqueued {enqueue_published(study, settings)} of the report's published "
              "configurations", file=out)

    objective = make_objective(settings, data, device)
    interrupts = Interrupts(study)
    try:
        with interrupts.installed():
            study.optimize(interrupts.guard(objective), n_trials=n_trials,
                           timeout=settings.timeout, catch=(Exception,),
                           show_progress_bar=out is sys.stdout,
                           callbacks=[lambda st, t: print_trial(st, t, out)])
    except KeyboardInterrupt:
        interrupts.requested = True
    if interrupts.requested:
        fail_if_running(study, interrupts.trial_ids)
        print(f"interrupted; the unfinished trial is marked FAIL and nothing is left "
              f"RUNNING. Resume with the same command (study {settings.study_name!r} in "
              f"{redact(settings.storage)}).", file=sys.stderr)
        return 130
    return print_summary(study, settings, out)


def list_studies(storage_url: str):
    """One row per study: name, model, trials per state, best validation accuracy."""
    import pandas as pd
    storage = open_storage(storage_url, heartbeat=False)
    rows = []
    for name in optuna.get_all_study_names(storage=storage):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
        row = {"study": name, "model": study.user_attrs.get("model", "?")}
        for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"):
            row[state.lower()] = sum(t.state.name == state for t in trials)
        row["best_val_acc"] = round(max(complete), 4) if complete else None
        rows.append(row)
    return pd.DataFrame(rows)
