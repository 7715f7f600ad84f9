"""One search space: the report's value lists for a model, and how a trial samples them.

Two flavours per model:
- "report": exactly the lists the report gives (categorical), the default;
- "wide": log-uniform lr and weight decay over the lists' span (weight decay down to 2.5e-5,
  the report's own best ResNet18 setting, which its lists leave out), uniform momentum, the
  same choices for the categorical parameters; and it also searches the learning-rate
  schedule and label smoothing (the report space keeps constant and none, so its tables
  stay comparable with the report's).
`suggest` is the only function here that touches an Optuna trial.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from spaces.defaults import SCHEDULES, Config, ConfigError, apply_overrides

# Continuous in the wide space; everything else stays a categorical list there too.
_LOG_UNIFORM = ("lr", "weight_decay")
_UNIFORM = ("momentum",)
# The wide space's lowest weight decay: the report's best ResNet18 (adam, test 0.8911,
# REPORT-FACTS.md Table 1) used 2.5e-5, below the lowest value its list gives (1e-4).
_WIDE_LOWEST = {"weight_decay": 2.5e-5}
# Searched by every model in the wide space only; the report space keeps their defaults.
TRAINING_PARAMS = ("schedule", "label_smoothing")
_LABEL_SMOOTHING_RANGE = (0.0, 0.2)  # uniform, wide space only
_OPTIMIZERS_WITH_MOMENTUM = ("momentum", "adam", "adamw")


@dataclass(frozen=True)
class Space:
    model: str
    lists: Mapping[str, tuple]           # the report's value lists, in suggestion order
    int_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # inclusive
    fixed_params: tuple[str, ...] = ()   # used by the model, but searched only by --set/--grid
    defaults: Config = Config()
    published_top: tuple[dict, ...] = ()  # the report's table rows, for --enqueue-report

    @property
    def parameters(self) -> tuple[str, ...]:
        """Every parameter this model uses (searched or not)."""
        return (*self.lists, *self.int_ranges, *self.fixed_params, *TRAINING_PARAMS, "epochs")

    def recorded(self) -> dict[str, Any]:
        """The lists and ranges as a study records them (JSON): a study refuses a space whose
        lists changed since it was made, naming the list, rather than fail every trial with
        Optuna's "dynamic value space" error."""
        return {**{name: list(values) for name, values in self.lists.items()},
                **{name: {"from": low, "to": high}
                   for name, (low, high) in self.int_ranges.items()}}

    def size(self, kind: str = "report", fixed: Mapping[str, Any] | None = None) -> int | None:
        """How many distinct configurations `suggest` can give; None where it draws from
        continuous ranges (the wide space). Plain SGD has no momentum: one configuration
        per optimizer without it."""
        if kind == "wide":
            return None
        fixed = fixed or {}
        count = 1
        for name, options in self.lists.items():
            if name not in fixed and name not in ("optimizer", "momentum"):
                count *= len(options)
        for name, (low, high) in self.int_ranges.items():
            if name not in fixed:
                count *= high - low + 1
        optimizers = ([fixed["optimizer"]] if "optimizer" in fixed
                      else list(self.lists.get("optimizer", [None])))
        momenta = 1 if "momentum" in fixed else len(self.lists.get("momentum", [None]))
        return count * sum(momenta if o in _OPTIMIZERS_WITH_MOMENTUM else 1 for o in optimizers)

    def check_names(self, names) -> None:
        for name in names:
            if name not in self.parameters:
                raise ConfigError(
                    f"parameter {name!r} does not apply to {self.model}; "
                    f"its parameters are: {', '.join(self.parameters)}")

    def suggest(self, trial, fixed: Mapping[str, Any] | None = None, kind: str = "report",
                grid: Mapping[str, list] | None = None) -> Config:
        """Sample one configuration. `fixed` values are used as given and never sampled.

        With `grid`, only the grid's parameters are sampled (from the grid's values, which
        Optuna's GridSampler requires); all others keep `fixed` or the defaults.
        """
        fixed = dict(fixed or {})
        values: dict[str, Any] = {}
        if grid:
            for name, options in grid.items():
                values[name] = trial.suggest_categorical(name, list(options))
            return apply_overrides(self.defaults, {**fixed, **values})

        for name, options in self.lists.items():
            if name in fixed:
                continue
            optimizer = fixed.get("optimizer", values.get("optimizer"))
            if name == "momentum" and optimizer not in _OPTIMIZERS_WITH_MOMENTUM:
                continue  # plain SGD has no momentum: don't waste a dimension on it
            values[name] = _suggest_one(trial, name, options, kind)
        for name, (low, high) in self.int_ranges.items():
            if name not in fixed:
                values[name] = trial.suggest_int(name, low, high)
        if kind == "wide":
            if "schedule" not in fixed:
                values["schedule"] = trial.suggest_categorical("schedule", list(SCHEDULES))
            if "label_smoothing" not in fixed:
                values["label_smoothing"] = trial.suggest_float(
                    "label_smoothing", *_LABEL_SMOOTHING_RANGE)
        return apply_overrides(self.defaults, {**fixed, **values})

    def fits(self, params: Mapping[str, Any], kind: str = "report") -> bool:
        """True when every searched value of a published row lies inside this space."""
        for name, value in params.items():
            if name in self.lists:
                options = self.lists[name]
                if kind == "wide" and name in (*_LOG_UNIFORM, *_UNIFORM):
                    if not _wide_range(name, options)[0] <= value <= max(options):
                        return False
                elif value not in options:
                    return False
            elif name in self.int_ranges:
                low, high = self.int_ranges[name]
                if not low <= value <= high:
                    return False
        return True

    def enqueue_params(self, kind: str = "report") -> list[dict]:
        """The published top configurations that fit, as the params a trial would suggest.

        In the wide space they also name the report's training: constant lr, no smoothing.
        """
        rows = []
        for row in self.published_top:
            params = {k: v for k, v in row.items() if k in self.lists or k in self.int_ranges}
            if params.get("optimizer") not in _OPTIMIZERS_WITH_MOMENTUM:
                params.pop("momentum", None)
            if kind == "wide":
                params.update(schedule="constant", label_smoothing=0.0)
            if self.fits(params, kind) and params not in rows:
                rows.append(params)
        return rows


def _wide_range(name: str, options: tuple) -> tuple[float, float]:
    """The wide space's (low, high) for a continuous parameter: the list's span, reaching
    further down where the report's own best settings lie below it."""
    return min(*options, _WIDE_LOWEST.get(name, math.inf)), max(options)


def _suggest_one(trial, name: str, options: tuple, kind: str):
    if kind == "wide" and name in _LOG_UNIFORM:
        return trial.suggest_float(name, *_wide_range(name, options), log=True)
    if kind == "wide" and name in _UNIFORM:
        return trial.suggest_float(name, *_wide_range(name, options))
    return trial.suggest_categorical(name, _choices(trial, name, options))


def _choices(trial, name: str, options: tuple) -> list:
    """Numeric choices in ascending order, unless the trial's study recorded another order.

    optuna-dashboard's slice and parallel-coordinate plots place a categorical choice at its
    index, so ascending choices draw ascending axes. Optuna refuses the same choices in
    another order within one study ("does not support dynamic value space"), so a study
    begun before the choices were sorted keeps the order it recorded.
    """
    numeric = all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options)
    choices = sorted(options) if numeric else list(options)
    study = getattr(trial, "study", None)  # a FixedTrial has none
    for past in study.get_trials(deepcopy=False) if study is not None else ():
        if name in past.distributions:
            recorded = list(getattr(past.distributions[name], "choices", ()))
            same = sorted(map(repr, recorded)) == sorted(map(repr, choices))
            return recorded if same else choices
    return choices
