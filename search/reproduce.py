"""`optuna-search reproduce`: the report's five experiments as five studies in one storage.

    (1) MLP activation grid        (2) ResNet18 Adam learning-rate grid
    (3) MLP-Mixer patch-size grid  (4) ResNet18 search        (5) MLP-Mixer search

The studies carry the same names as the single commands (`optuna-search mlp --grid
activation=relu,sigmoid,tanh` writes `mlp-grid-activation`), so either way fills the same
study. The data is loaded once for all five. Rerunning resumes: finished grid points and
trials are not run again. Then reports.reproduction writes REPORT.md, figures/, report.html.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from search.data import make_dataset
from search.study import SearchSettings, open_study, run_search
from storage import DEFAULT_STORAGE


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


@dataclass
class ReproduceSettings:
    out_dir: Path = Path("reproduction")
    budget: str = "small"
    epochs: int | None = None         # None: the budget's
    trials: int | None = None
    data: str = "cifar10"
    data_dir: str = "data"
    storage: str = DEFAULT_STORAGE
    train_subset: int | None = None
    test_subset: int | None = None
    val_size: int | None = None
    device: str = "auto"
    seed: int = 0

    def resolved(self) -> dict:
        """The budget's values, overridden by what the user set."""
        values = dict(BUDGETS[self.budget])
        for key in ("epochs", "trials", "train_subset", "test_subset", "val_size"):
            if getattr(self, key) is not None:
                values[key] = getattr(self, key)
        return values


def search_settings(experiment: Experiment, settings: ReproduceSettings) -> SearchSettings:
    budget = settings.resolved()
    return SearchSettings(
        model=experiment.model, trials=None if experiment.grid else budget["trials"],
        storage=settings.storage, epochs=budget["epochs"], data=settings.data,
        data_dir=settings.data_dir, train_subset=budget["train_subset"],
        test_subset=budget["test_subset"], val_size=budget["val_size"],
        device=settings.device, seed=settings.seed, fixed=dict(experiment.fixed),
        grid=experiment.grid)


def trials_left(search: SearchSettings) -> int:
    """A search's trials not yet finished (complete or pruned); grids count themselves."""
    if search.grid:
        return 1  # run_search runs exactly the grid points that are not done
    study = open_study(search)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return max(0, search.trials - len(done))


def run_reproduction(settings: ReproduceSettings, out=None) -> int:
    """Run what is missing of the five studies, then write the report; 0, or 130 on Ctrl-C."""
    from reports.reproduction import write_reproduction
    out = sys.stdout if out is None else out
    budget = settings.resolved()
    data = make_dataset(settings.data, settings.data_dir, seed=settings.seed,
                        val_size=budget["val_size"], train_subset=budget["train_subset"],
                        test_subset=budget["test_subset"])
    for experiment in EXPERIMENTS:
        search = search_settings(experiment, settings)
        print(f"== experiment {experiment.number}: {experiment.title} "
              f"(study {search.study_name!r})", file=out, flush=True)
        left = trials_left(search)
        if left == 0:
            print(f"all {search.trials} trials already finished", file=out)
            continue
        if not search.grid:
            search.trials = left
        status = run_search(search, out=out, data=data)
        if status != 0:
            return status
    written = write_reproduction(settings.storage, EXPERIMENTS, settings.out_dir,
                                 {e.number: search_settings(e, settings).study_name
                                  for e in EXPERIMENTS})
    for note in written.notes:
        print(f"note: {note}", file=out)
    print(f"wrote {settings.out_dir / 'REPORT.md'}, {settings.out_dir / 'report.html'} and "
          f"{len(list((settings.out_dir / 'figures').glob('fig*.html')))} figures in "
          f"{settings.out_dir / 'figures'}", file=out)
    return 0
