"""The packages' import rules, which the design rests on: the trainer (search/train/) knows
nothing of Optuna or the storage; the search spaces and the storage know nothing of torch or of
the search; the command line's grammar loads without torch (it answers before the heavy
imports), and its --data check loads neither torch, Optuna nor PIL (it answers within a
second). Each is checked in a fresh interpreter: what importing the modules pulls in."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO

TRAIN = ["search.train." + m for m in ("data", "models", "steps", "capture", "schedules",
                                       "checkpoint", "trainer", "gpu_share", "errors",
                                       "sources")]


def loaded_after_importing(modules: list[str]) -> set[str]:
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return set(json.loads(out))


def top_levels(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("modules, forbidden", [
    (TRAIN, {"optuna", "storage", "reports", "sqlalchemy"}),
    (["spaces"], {"torch", "optuna", "search", "storage"}),
    (["storage"], {"torch", "search", "reports"}),
    (["search.cli.arguments", "search.settings"], {"torch"}),
    (["search.cli.early"], {"torch", "optuna", "storage", "PIL", "numpy", "sqlalchemy"}),
], ids=["trainer", "spaces", "storage", "command line", "the --data check"])
def test_a_layer_imports_nothing_above_it(modules, forbidden):
    loaded = loaded_after_importing(modules)
    assert not top_levels(loaded) & forbidden
    if "search.train.trainer" in modules:   # not even search's other modules
        others = {m for m in loaded if m.startswith("search.") and
                  not m.startswith("search.train")}
        assert others <= {"search.train"}, others
