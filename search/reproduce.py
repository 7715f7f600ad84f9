"""`optuna-search reproduce`: the report's five experiments as five studies in one storage.

    (1) MLP activation grid        (2) ResNet18 Adam learning-rate grid
    (3) MLP-Mixer patch-size grid  (4) ResNet18 search        (5) MLP-Mixer search

With `--budget full` the studies carry the same names as the single commands
(`optuna-search mlp --grid activation=relu,sigmoid,tanh` writes `mlp-grid-activation`), so
either way fills the same study. Another budget gets names of its own (`mlp-grid-activation-
small`): a study never mixes two budgets. The data is loaded once for all five. Rerunning
resumes: finished grid points and trials are not run again. Then reports.reproduction writes
REPORT.md, figures/, report.html.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from search.launch import run_search
from search.run import load_data
from search.settings import RunSettings, StudySpec, default_pruner


@dataclass(frozen=True)
class Experiment:
    number: int
    title: str
    model: str
    fixed: dict = field(default_factory=dict)
    grid: dict | None = None      # None: a search of `trials` trials over the report's space


EXPERIMENTS = (
    Experiment(1, "MLP non-linearity", "mlp", grid={"activation": ["relu", "sigmoid", "tanh"]}),
    Experiment(2, "ResNet18 learning rate with Adam", "resnet18", fixed={"optimizer": "adam"},
               grid={"lr": [0.1, 0.01, 0.001, 0.0001, 0.00001]}),
    Experiment(3, "MLP-Mixer patch size", "mlpmixer", grid={"patch_size": [4, 8, 16]}),
    Experiment(4, "ResNet18 hyperparameter search", "resnet18"),
    Experiment(5, "MLP-Mixer hyperparameter search", "mlpmixer"),
)

# small: the whole reproduction on a 2-core CPU in under 10 minutes (subset data, 2 epochs,
# 4 trials per search); full: the report's own (30 epochs, 30 trials, all the data).
BUDGETS = {
    "small": dict(epochs=2, trials=4, train_subset=500, test_subset=500, val_size=250),
    "full": dict(epochs=30, trials=30, train_subset=None, test_subset=None, val_size=5000),
}


IDENTITY_KEYS = ("epochs", "train_subset", "test_subset", "val_size")  # trials: the target


def budget_suffix(budget: dict) -> str:
    """'' for the report's own budget, '-small' for the small one, else what differs."""
    if all(budget[k] == BUDGETS["full"][k] for k in IDENTITY_KEYS):
        return ""
    if all(budget[k] == BUDGETS["small"][k] for k in IDENTITY_KEYS):
        return "-small"
    labels = {"epochs": "epochs", "train_subset": "train", "test_subset": "test",
              "val_size": "val"}
    return "-" + "-".join(f"{labels[k]}{budget[k] or 'all'}" for k in IDENTITY_KEYS)


def plan(args) -> list[tuple[Experiment, RunSettings]]:
    """Each experiment with its run settings, built from the `reproduce` command's arguments:
    the budget's values (BUDGETS) where the command sets none."""
    budget = {key: value if getattr(args, key, None) is None else getattr(args, key)
              for key, value in BUDGETS[args.budget].items()}
    suffix = budget_suffix(budget)
    runs = []
    for experiment in EXPERIMENTS:
        if experiment.number not in getattr(args, "experiments", (1, 2, 3, 4, 5)):
            continue
        spec = StudySpec(model=experiment.model, fixed=dict(experiment.fixed),
                         grid=experiment.grid, epochs=budget["epochs"], data=args.data,
                         train_subset=budget["train_subset"],
                         test_subset=budget["test_subset"], val_size=budget["val_size"],
                         seed=args.seed, pruner=default_pruner(experiment.grid))
        runs.append((experiment, RunSettings(
            spec=spec, storage=args.storage, study=spec.default_study_name() + suffix,
            trials=None if experiment.grid else budget["trials"], data_dir=args.data_dir,
            device=args.device, pruner_given=False)))   # as the single commands: a study
                                                        # made earlier keeps its pruner
    return runs


def run_reproduction(runs: list[tuple[Experiment, RunSettings]], out_dir: Path,
                     out=None) -> int:
    """Run what is missing of the studies, then write the report; 0, or 130 on Ctrl-C."""
    from reports.reproduction import write_reproduction
    out = sys.stdout if out is None else out
    data = load_data(runs[0][1])  # one split serves them all
    for experiment, search in runs:
        print(f"== experiment {experiment.number}: {experiment.title} "
              f"(study {search.study_name!r})", file=out, flush=True)
        status = run_search(search, out=out, data=data)
        if status != 0:
            return status
    storage = runs[0][1].storage
    written = write_reproduction(storage, [e for e, _ in runs], out_dir,
                                 {e.number: search.study_name for e, search in runs})
    for note in written.notes:
        print(f"note: {note}", file=out)
    print(f"wrote {out_dir / 'REPORT.md'}, {out_dir / 'report.html'} and "
          f"{len(list((out_dir / 'figures').glob('fig*.html')))} figures in "
          f"{out_dir / 'figures'}", file=out)
    return 0
