"""The one settings object of a run, resolved once at parse time.

- `StudySpec`: what a study is made of (model, space, --set values, grid, epochs, data and its
  options, seed, sampler, pruner). It is written into the study once, in one write, and every
  process that joins the study reads it back from there: a study never mixes two of them.
- `RunSettings`: the spec plus what only this run decides (storage, study name, the trial
  target, device, workers, time-out, Ray, ...).

A trial's configuration comes from the spec alone (`spec.config(trial)`): the trainer's Config,
with the searched values, the --set values and the epochs. Every default lives once: the
training defaults in spaces.Config, the storage's in storage/.
Nothing here imports torch or optuna: the command line resolves settings before anything heavy
is imported or anything is written.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from spaces import Config, get_space

DEFAULT_TRIALS = 30     # the target of a new study when --trials is not given
DEFAULT_EPOCHS = Config.epochs
# A new search's pruner when --pruner is not given (a study keeps the one it was made with).
# Hyperband, not median pruning: on the search-efficiency benchmark's 10 paired seeds it spent
# 19% fewer epochs for the same best accuracy and passed random search's result sooner (0.32 of
# its epochs, median pruning 0.37; bench/README.md). Specs made in code (reproduce, tests) keep
# StudySpec's "median".
DEFAULT_PRUNER = "hyperband"


def default_pruner(grid) -> str:
    """The pruner a study gets when none is named: a grid keeps median pruning (each point is
    wanted to the end, and median pruning judges no point of a grid of 5 or fewer, like the
    report's); a search gets DEFAULT_PRUNER."""
    return "median" if grid else DEFAULT_PRUNER


@dataclass(frozen=True)
class StudySpec:
    model: str
    space: str = "report"
    fixed: dict[str, Any] = field(default_factory=dict)   # --set values, never `epochs`
    grid: dict[str, list] | None = None
    epochs: int = DEFAULT_EPOCHS
    data: str = "cifar10"                                 # the source as named when made
    data_content: str = ""     # fingerprint of the data's content (train/data.py), once loaded
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int = 5000
    seed: int = 0
    sampler: str = "tpe"
    pruner: str = "median"
    # Over the sampler's and pruner's pinned settings (search/study.py make_sampler,
    # make_pruner): what the search-efficiency benchmark varies; the command line keeps {}.
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner_options: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, Any] | None = None   # the space's value lists; None: the model's today
    # An audit (search/audit.py): the study whose pruned trials this one trains to the full
    # budget. It runs only the trials queued in it, each a pruned trial's exact parameters.
    audit_of: str | None = None

    def __post_init__(self):
        if "epochs" in self.fixed:  # one place holds the epochs: the spec's own field
            raise ValueError("StudySpec.fixed must not hold epochs; use StudySpec.epochs")
        if self.lists is None:  # a study records the lists it searches (spaces/space.py)
            object.__setattr__(self, "lists", get_space(self.model).recorded())

    def config(self, trial) -> Config:
        """The trainer's Config for an Optuna trial (or FixedTrial): the space samples what
        is searched; the --set values and the epochs are as given (a grid may set them)."""
        return get_space(self.model).suggest(trial, {**self.fixed, "epochs": self.epochs},
                                             self.space, self.grid)

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists), as stored in the study."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "StudySpec":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        fixed = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in (values.get("fixed") or {}).items()}
        return cls(**{**values, "fixed": fixed})

    def differences(self, other: "StudySpec") -> list[str]:
        """`name: ours vs theirs` for every field that differs (comparing JSON forms).

        Where both know the data's content, the path it was read from does not matter (other
        machines, other folders): its content does."""
        mine, theirs = self.as_json(), other.as_json()
        same_place = {"data"} if mine["data_content"] and theirs["data_content"] else set()
        lists = [f"the {name} list {_show(mine['lists'].get(name))} (asked) vs "
                 f"{_show(theirs['lists'].get(name))} (study)"
                 for name in {**mine["lists"], **theirs["lists"]}
                 if mine["lists"].get(name) != theirs["lists"].get(name)]
        return [f"{name} {_show(mine[name])} (asked) vs {_show(theirs[name])} (study)"
                for name in mine if mine[name] != theirs[name]
                and name not in same_place | {"lists"}] + lists

    def with_data(self, fingerprint: str) -> "StudySpec":
        """This spec once its data is loaded: with the content's fingerprint."""
        return dataclasses.replace(self, data_content=fingerprint)

    @property
    def queued_only(self) -> bool:
        """It runs the trials queued in it and samples none: a grid, or an audit."""
        return bool(self.grid) or self.audit_of is not None

    @property
    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, in a fixed order."""
        points: list[dict[str, Any]] = [{}]
        for name, values in (self.grid or {}).items():
            points = [{**point, name: value} for point in points for value in values]
        return points if self.grid else []

    def default_study_name(self) -> str:
        """resnet18; a grid gets its own: resnet18-optimizer=adam-grid-lr."""
        if not self.grid:
            return self.model
        parts = [self.model, *(f"{k}={_show(v)}" for k, v in sorted(self.fixed.items())),
                 "grid-" + "-".join(sorted(self.grid))]
        return "-".join(parts)


@dataclass(frozen=True)
class RunSettings:
    spec: StudySpec
    storage: str
    study: str | None = None          # None: the spec's default name
    trials: int | None = None         # the study's target; None: keep the study's (new: 30)
    data_path: str | None = None      # where this machine loads the data from; None: spec.data
    data_dir: str = "data"            # where torchvision's cifar10 lives
    device: str = "auto"
    workers: int = 1
    timeout: float | None = None
    enqueue_report: bool = False
    ray: str | None = None            # None, "local", "auto" or HOST:PORT
    gpus_per_trial: float | None = None
    join: bool = False                # `optuna-search worker`: the study must exist
    storage_patience: float | None = None   # seconds an outage is ridden out; None: storage's
    checkpoint_every: float = 60.0    # seconds between a trial's checkpoints; 0: every epoch
    device_shared_by: int = 1         # trials sharing this process's device (timings say so)
    quiet: bool = False               # one line per trial, no bars or epoch lines
    capture: str = "auto"             # CUDA graphs of the steps: auto (on CUDA) or off
    pruner_given: bool = True         # False: the spec's pruner is a default, and a study
                                      # made with another one keeps its own (search/study.py)

    @property
    def study_name(self) -> str:
        return self.study or self.spec.default_study_name()

    @property
    def data_source(self) -> str:
        return self.data_path or self.spec.data

    def replace(self, **changes: Any) -> "RunSettings":
        return dataclasses.replace(self, **changes)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, dict):
        return ";".join(f"{k}={_show(v)}" for k, v in value.items()) or "{}"
    return "none" if value is None else str(value)
