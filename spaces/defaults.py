"""The report's defaults as one frozen dataclass, and typed parsing of KEY=VALUE overrides.

Defaults (../shared/REPORT-FACTS.md): batch 128, AdamW, 30 epochs, lr 1e-3, momentum 0.9
(AdamW's beta1), weight decay 5e-4; MLP-Mixer patch 4, embed 256, 4 blocks, drop 0.0.
The report trained at a constant learning rate without label smoothing: so do the defaults.
A `Config()` trains on its own: every field has a value.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A parameter name or value the user typed is not acceptable."""


OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu")
# Learning-rate schedules, stepped per batch (search/train/schedules.py): constant (the report's),
# cosine (linear warmup, then cosine to ~0), onecycle (torch's OneCycleLR, peak = lr).
SCHEDULES = ("constant", "cosine", "onecycle")


@dataclass(frozen=True)
class Config:
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9        # SGD momentum for "momentum", beta1 for adam/adamw, unused by "sgd"
    weight_decay: float = 5e-4
    epochs: int = 30
    schedule: str = "constant"   # one of SCHEDULES; `lr` is the peak learning rate
    label_smoothing: float = 0.0  # of the training loss only (validation/test loss: plain)
    # MLP-Mixer
    patch_size: int = 4          # pixels per patch side; must divide 32
    embed_dim: int = 256         # c, the hidden (embedding) width
    num_blocks: int = 4
    drop_rate: float = 0.0       # dropout inside the Mixer / MLP blocks
    # MLP
    activation: str = "relu"
    hidden_sizes: tuple[int, ...] = (512, 256)

    def __post_init__(self) -> None:
        check(self)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PARAMETER_NAMES = tuple(f.name for f in fields(Config))
_TYPES = {f.name: f.type for f in fields(Config)}


def check(config: Config) -> None:
    """Raise ConfigError for values no model or optimizer can use."""
    def bad(name: str, why: str) -> ConfigError:
        return ConfigError(f"{name}={getattr(config, name)!r}: {why}")

    if config.batch_size < 1:
        raise bad("batch_size", "must be a positive integer")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise bad("lr", "must be a positive number")
    if config.optimizer not in OPTIMIZERS:
        raise bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    if not 0 <= config.momentum < 1:
        raise bad("momentum", "must be in [0, 1)")
    if not (config.weight_decay >= 0 and math.isfinite(config.weight_decay)):
        raise bad("weight_decay", "must be >= 0")
    if config.epochs < 1:
        raise bad("epochs", "must be a positive integer")
    if config.schedule not in SCHEDULES:
        raise bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
    if not 0 <= config.label_smoothing < 1:
        raise bad("label_smoothing", "must be in [0, 1)")
    if config.patch_size < 1 or 32 % config.patch_size:
        raise bad("patch_size", "must divide the 32-pixel image side (1, 2, 4, 8, 16, 32)")
    if config.embed_dim < 2:
        raise bad("embed_dim", "must be an integer >= 2")
    if config.num_blocks < 1:
        raise bad("num_blocks", "must be a positive integer")
    if not 0 <= config.drop_rate < 1:
        raise bad("drop_rate", "must be in [0, 1)")
    if config.activation not in ACTIVATIONS:
        raise bad("activation", f"must be one of {', '.join(ACTIVATIONS)}")
    if not config.hidden_sizes or any(h < 1 for h in config.hidden_sizes):
        raise bad("hidden_sizes", "must be positive integers, e.g. 512,256")


def parse_value(name: str, text: str) -> Any:
    """Parse one value typed on the command line into the parameter's type."""
    if name not in _TYPES:
        raise ConfigError(f"unknown parameter {name!r}; known: {', '.join(PARAMETER_NAMES)}")
    kind = _TYPES[name]
    text = text.strip()
    try:
        if kind == "int":
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind == "str":
            if not text:
                raise ValueError
            return text.lower()
        # tuple[int, ...]: "512,256" or "512x256"
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected {_describe(kind)}") from None


def _describe(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "str": "a word"}.get(
        kind, "comma-separated integers such as 512,256")


def parse_assignment(text: str) -> tuple[str, str]:
    """Split "KEY=VALUE"; raise ConfigError for anything else."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(f"{text!r}: expected KEY=VALUE, e.g. lr=0.001")
    return key.strip(), value.strip()


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Return config with overrides applied, checking every value."""
    try:
        return config.replace(**overrides)
    except TypeError as error:  # an unknown field name
        raise ConfigError(str(error)) from None
