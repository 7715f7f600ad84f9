"""Open or create a study; everything that decides what runs next is written into it.

- its spec (search/settings.py: model, space, --set values, grid, epochs, data options, seed,
  sampler, pruner), in one write; a run asking for another spec is refused, naming each
  difference; a study interrupted while being made is completed by the next run;
- its trial target (`--trials`), counted in the storage by search/run.py;
- its grid points, queued once as WAITING trials that any process can take;
- a run counter: each process that opens it is a new run, with its own sampler seed.
All of it under the study's lock (storage/lock.py), so simultaneous launchers agree.
This module opens studies; search/run.py runs them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from reports.study_data import TARGET_ATTR, save_record, study_record
from search.errors import StudyMismatch
from search.settings import DEFAULT_TRIALS, RunSettings, StudySpec
from spaces import get_space
from storage import MAX_TRIES, Store, open_store

# The study's record (the StudySpec, the sampler/pruner settings and its uid) is one write,
# kept where the dashboard's study card does not show it: reports/study_data.py.
RUNS_ATTR = "runs"              # how many processes have opened it to run trials
METRIC_NAME = "val_acc"         # the objective's name in Optuna's figures and the dashboard


@dataclass
class OpenStudy:
    study: optuna.Study
    store: Store             # where it lives (storage/store.py)
    spec: StudySpec
    uid: str                 # made with the study: keys its checkpoints
    run: int | None          # this process's run number; None when it runs no trials
    sampler_seed: int | None


def make_sampler(spec: StudySpec, seed: int):
    """The sampler and the settings recorded with the study, so studies stay comparable.

    A grid study's trials are all queued points with fixed parameters: its sampler never draws.
    `spec.sampler_options` override the pinned settings (the benchmark's policies).
    """
    if spec.grid:
        return optuna.samplers.RandomSampler(seed=seed), {"name": "grid"}
    if spec.sampler == "tpe":
        pinned = {**dict(n_startup_trials=10, n_ei_candidates=24, multivariate=True,
                         constant_liar=True, group=False), **spec.sampler_options}
        return optuna.samplers.TPESampler(seed=seed, **pinned), {"name": "tpe", **pinned}
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed), {"name": "random"}
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed), {"name": "gp"}
    raise ValueError(f"unknown sampler {spec.sampler!r}")


def make_pruner(spec: StudySpec):
    """The pruner and its recorded settings; `spec.pruner_options` override the pinned ones.

    "patient" is the median pruner that also waits until a trial has not improved for
    `patience` epochs (Optuna's PatientPruner), "halving" successive halving.
    """
    epochs, options = spec.epochs, dict(spec.pruner_options)
    if spec.pruner in ("median", "patient"):
        # Warm-up: the first epochs of any run are noisy; judge a trial from epoch ~epochs/5.
        patience = options.pop("patience", 1) if spec.pruner == "patient" else None
        pinned = {**dict(n_startup_trials=5, n_warmup_steps=max(1, min(5, epochs // 5)),
                         interval_steps=1), **options}
        median = optuna.pruners.MedianPruner(**pinned)
        if patience is None:
            return median, {"name": "median", **pinned}
        return (optuna.pruners.PatientPruner(median, patience=patience),
                {"name": "patient", "patience": patience, **pinned})
    if spec.pruner == "hyperband":
        pinned = {**dict(min_resource=1, max_resource=epochs, reduction_factor=3), **options}
        return optuna.pruners.HyperbandPruner(**pinned), {"name": "hyperband", **pinned}
    if spec.pruner == "halving":
        pinned = {**dict(min_resource=1, reduction_factor=3, min_early_stopping_rate=0),
                  **options}
        return (optuna.pruners.SuccessiveHalvingPruner(**pinned),
                {"name": "halving", **pinned})
    if spec.pruner == "none":
        return optuna.pruners.NopPruner(), {"name": "none"}
    raise ValueError(f"unknown pruner {spec.pruner!r}")


def run_seed(study_seed: int, run: int) -> int:
    """The sampler seed of run number `run`: its own, so no run replays another's random
    phase, and the same for the same run, so one run stays reproducible."""
    digest = hashlib.sha256(f"optuna-search:{study_seed}:{run}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def recorded_spec(study: optuna.Study) -> StudySpec | None:
    record = study_record(study)
    return StudySpec.from_json(record["spec"]) if record else None


def open_study(settings: RunSettings, new_run: bool = True,
               store: Store | None = None) -> OpenStudy:
    """Create (or load) the study and bring it to this run's settings, under its lock.

    `new_run`: this process will run trials: count the run and seed its sampler with it
    (start_run). Raises StudyMismatch (exit 2) for another spec, or a missing study when
    joining.
    """
    store = store or open_store(settings.storage, patience=settings.storage_patience)
    name, spec = settings.study_name, settings.spec
    with store.lock(name):
        study = (_load_made(store, name) if settings.join else optuna.create_study(
            storage=store.optuna, study_name=name, direction="maximize", load_if_exists=True))
        record = study_record(study)
        if record is None:
            if "model" in study.user_attrs:  # made by an optuna-search before specs
                raise StudyMismatch(f"study {name!r} was made by an older optuna-search; "
                                    "pick another name with --study")
            # New, or interrupted while being made: this write completes it.
            _, sampler = make_sampler(spec, spec.seed)
            _, pruner = make_pruner(spec)
            save_record(study, {"spec": spec.as_json(), "sampler": sampler, "pruner": pruner,
                                "uid": uuid.uuid4().hex[:12]})
        else:
            made_with = StudySpec.from_json(record["spec"])
            if not settings.pruner_given:   # a default: the study's own pruner stays
                spec = dataclasses.replace(spec, pruner=made_with.pruner)
            differences = spec.differences(made_with)
            if differences:
                raise StudyMismatch(
                    f"study {name!r} in {store.name} was made with other "
                    f"settings: {'; '.join(differences)}; resume it with its own settings, "
                    "or start another with --study NEW-NAME")
        if study.metric_names != [METRIC_NAME]:
            with warnings.catch_warnings():  # experimental in Optuna 5, and what we need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([METRIC_NAME])
        if spec.audit_of is not None:
            pass  # an audit's points and target are queued by search/audit.py alone
        elif spec.grid:
            # Retries first: a point whose FAIL has a retry due (or lost) is not queued anew.
            store.fail_stale_trials(study)
            queue_grid_points(study, spec)
        else:
            _set_target(study, settings.trials)
            if settings.enqueue_report:
                enqueue_published(study, spec)
    opened = OpenStudy(study, store, spec, study_record(study)["uid"], None, None)
    study.sampler, study.pruner = make_sampler(spec, spec.seed)[0], make_pruner(spec)[0]
    return start_run(opened) if new_run else opened


def start_run(opened: OpenStudy) -> OpenStudy:
    """This process will run trials in the study: its run number (counted in the study, under
    its lock) and the sampler seeded with it."""
    study, spec = opened.study, opened.spec
    with opened.store.lock(study.study_name):
        run = study.user_attrs.get(RUNS_ATTR, 0) + 1
        study.set_user_attr(RUNS_ATTR, run)
    seed = run_seed(spec.seed, run)
    study.sampler = make_sampler(spec, seed)[0]
    return dataclasses.replace(opened, run=run, sampler_seed=seed)


def load_spec(store: Store, study_name: str) -> StudySpec:
    """The spec a study was made with, for `optuna-search worker` (which never makes one)."""
    return recorded_spec(_load_made(store, study_name))


def _load_made(store: Store, name: str) -> optuna.Study:
    """A study that `optuna-search MODEL` made (to join it); StudyMismatch otherwise."""
    try:
        study = optuna.load_study(study_name=name, storage=store.optuna)
    except KeyError:
        raise StudyMismatch(f"no study {name!r} in {store.name}; make it with "
                            f"optuna-search MODEL --study {name}") from None
    if study_record(study) is None:
        raise StudyMismatch(f"study {name!r} records no optuna-search settings (not made "
                            "by optuna-search, or interrupted while being made: run the "
                            "command that makes it again)")
    return study


def _set_target(study: optuna.Study, trials: int | None) -> None:
    """--trials N is the study's target; without it the study keeps its own (new: 30)."""
    current = study.user_attrs.get(TARGET_ATTR)
    wanted = trials if trials is not None else (current or DEFAULT_TRIALS)
    if wanted != current:
        study.set_user_attr(TARGET_ATTR, wanted)


def _point(trial: optuna.trial.FrozenTrial, names) -> tuple:
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    return tuple(params.get(name) for name in names)


def _grid_tally(study: optuna.Study, names: list[str]) -> tuple[set, dict]:
    """The grid points with a trial that is not FAIL, and each point's number of FAILs."""
    settled, failures = set(), {}
    for trial in study.get_trials(deepcopy=False):
        point = _point(trial, names)
        if trial.state == TrialState.FAIL:
            failures[point] = failures.get(point, 0) + 1
        else:
            settled.add(point)
    return settled, failures


def queue_grid_points(study: optuna.Study, spec: StudySpec) -> int:
    """Queue each grid point that has no trial yet (or whose trials all failed, with tries
    left), once: the study is the one list of what remains. Returns how many were queued."""
    names = list(spec.grid)
    settled, failures = _grid_tally(study, names)
    queued = 0
    for point in spec.grid_points:
        key = tuple(point[name] for name in names)
        if key not in settled and failures.get(key, 0) < MAX_TRIES:
            study.enqueue_trial(point)
            queued += 1
    return queued


def enqueue_published(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue the report's top configurations that fit this space, once per study."""
    rows = get_space(spec.model).enqueue_params(spec.space)
    # A row that contradicts a --set value is another configuration, not a warm start.
    rows = [{k: v for k, v in r.items() if k not in spec.fixed} for r in rows
            if all(r.get(k, v) == v for k, v in spec.fixed.items())]
    for row in rows:
        study.enqueue_trial(row, skip_if_exists=True)
    return len(rows)


def grid_failures(study: optuna.Study, spec: StudySpec) -> list[dict[str, Any]]:
    """Grid points that used up their tries without finishing: reported to the user."""
    names = list(spec.grid or {})
    settled, failures = _grid_tally(study, names)
    return [dict(zip(names, key)) for key, n in failures.items()
            if key not in settled and n >= MAX_TRIES]
