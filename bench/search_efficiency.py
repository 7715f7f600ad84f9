"""How soon does a search find a good configuration, per epoch spent? Search policies (sampler
and pruner) against random search, on the product's own machinery: the run loop
(search/run.py), the study (search/study.py), the objective and trainer. One Optuna study per
(policy, seed), all in one storage: an interrupted run goes on where it stopped (a killed
trial is retried from its checkpoint, as in any search), and a rerun trains nothing twice.

    python bench/search_efficiency.py --data ../shared/data/cifar10-jpeg.tar.gz   # CPU budget
    python bench/search_efficiency.py --budget gpu --data ...                     # a GPU lent
    python bench/search_efficiency.py --summary-only          # the table and figure so far

Paired seeds: seed s of every policy has the same data split, the same initial weights and the
same sampler seed, so TPE's random start-up trials are random search's first trials. The
table, the anytime figure and its numbers go to --out (bench/efficiency_summary.py); the
measured figures are in bench/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(1, str(Path(__file__).resolve().parent))      # efficiency_summary

# The budgets of issue 31. cpu: a few minutes to an hour a search on a 2-core machine.
BUDGETS = {
    "cpu": dict(model="mlp", train_subset=5000, val_size=1000, test_subset=2000, epochs=10,
                trials=30, device="cpu"),
    "gpu": dict(model="resnet18", train_subset=None, val_size=5000, test_subset=None,
                epochs=30, trials=30, device="cuda"),
}


@dataclass(frozen=True)
class Policy:
    name: str            # the studies are <budget>-<name>-seed<s>
    sampler: str
    pruner: str
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner_options: dict[str, Any] = field(default_factory=dict)
    about: str = ""


# Every policy spells out its settings, so a study keeps what it was made with when the
# product's defaults change; the summary marks the one the product uses now.
TPE10, TPE5 = dict(n_startup_trials=10), dict(n_startup_trials=5)
POLICIES = [   # run in this order within a seed: the most informative first
    Policy("random", "random", "none", about="random search, no pruning: the reference"),
    Policy("tpe10-median-s5-w2", "tpe", "median", TPE10,
           dict(n_startup_trials=5, n_warmup_steps=2),
           "TPE, 10 random start-up trials; median pruning after 5 complete, from epoch 2"
           " (the default until Hyperband, see bench/README.md)"),
    Policy("tpe10-median", "tpe", "median", TPE10,
           about="TPE, 10 start-up; median pruning as pinned (after 5 complete, from epoch "
                 "epochs // 5): the default before Hyperband, at any budget"),
    Policy("tpe5-median-s2-w1", "tpe", "median", TPE5,
           dict(n_startup_trials=2, n_warmup_steps=1),
           "TPE, 5 start-up; median pruning after 2 complete, from epoch 1"),
    Policy("tpe10-median-s2-w1", "tpe", "median", TPE10,
           dict(n_startup_trials=2, n_warmup_steps=1),
           "TPE, 10 start-up; median pruning after 2 complete, from epoch 1"),
    Policy("tpe5-median-s5-w2", "tpe", "median", TPE5,
           dict(n_startup_trials=5, n_warmup_steps=2),
           "TPE, 5 start-up; median pruning after 5 complete, from epoch 2"),
    Policy("tpe5-halving", "tpe", "halving", TPE5,
           dict(min_resource=1, reduction_factor=3),
           "TPE, 5 start-up; successive halving (rungs at 1, 3, 9 epochs; the best third "
           "goes on)"),
    Policy("tpe10-halving", "tpe", "halving", TPE10,
           dict(min_resource=1, reduction_factor=3),
           "TPE, 10 start-up; successive halving (rungs at 1, 3, 9 epochs)"),
    Policy("tpe10-halving-m2", "tpe", "halving", TPE10,
           dict(min_resource=2, reduction_factor=3),
           "TPE, 10 start-up; successive halving (rungs at 2 and 6 epochs)"),
    Policy("tpe10-halving-r2", "tpe", "halving", TPE10,
           dict(min_resource=1, reduction_factor=2),
           "TPE, 10 start-up; successive halving (rungs at 1, 2, 4, 8 epochs; the best half"
           " goes on)"),
    Policy("tpe10-hyperband", "tpe", "hyperband", TPE10,
           about="TPE; Hyperband (min 1 epoch, reduction 3): the default"),
    Policy("tpe10-none", "tpe", "none", TPE10, about="TPE, no pruning"),
    # Optuna's TPE sees only the trials of a trial's own Hyperband bracket (3 brackets here),
    # each with its own random start-up: 10 per bracket is 30 random trials of 30.
    Policy("tpe5-hyperband", "tpe", "hyperband", TPE5,
           about="TPE, 5 start-up trials per Hyperband bracket; Hyperband"),
    Policy("tpe3-hyperband", "tpe", "hyperband", dict(n_startup_trials=3),
           about="TPE, 3 start-up trials per Hyperband bracket; Hyperband"),
    Policy("random-hyperband", "random", "hyperband",
           about="random search with Hyperband pruning"),
]
BY_NAME = {p.name: p for p in POLICIES}


def parse_seeds(text: str) -> list[int]:
    """"0-4" -> [0, 1, 2, 3, 4]; "0,3" -> [0, 3]."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return list(dict.fromkeys(seeds))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--storage", default="sqlite:///search-efficiency.db")
    p.add_argument("--out", default="search-efficiency", help="folder for table and figure")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2 (default 0-4)")
    p.add_argument("--policies", default=",".join(p.name for p in POLICIES),
                   help=f"comma-separated, of: {', '.join(BY_NAME)}")
    p.add_argument("--summary-only", action="store_true", help="train nothing")
    # Overrides of the budget (tests run it on tiny synthetic data):
    for name in ("trials", "epochs", "train-subset", "val-size", "test-subset"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--model")
    p.add_argument("--device")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        args.seeds = parse_seeds(args.seeds)
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give e.g. 0-4 or 0,2")
    unknown = [n for n in args.policies.split(",") if n not in BY_NAME]
    if unknown:
        p.error(f"unknown policy {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    args.policies = [BY_NAME[n] for n in args.policies.split(",")]
    return args


def budget_of(args) -> dict[str, Any]:
    budget = dict(BUDGETS[args.budget])
    for key in ("trials", "epochs", "train_subset", "val_size", "test_subset", "model",
                "device"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    return budget


def settings_for(policy: Policy, seed: int, budget: dict, args, fixed: dict):
    from search.settings import RunSettings, StudySpec
    spec = StudySpec(model=budget["model"], fixed=fixed, epochs=budget["epochs"],
                     data=args.data, train_subset=budget["train_subset"],
                     test_subset=budget["test_subset"], val_size=budget["val_size"],
                     seed=seed, sampler=policy.sampler, pruner=policy.pruner,
                     sampler_options=dict(policy.sampler_options),
                     pruner_options=dict(policy.pruner_options))
    return RunSettings(spec=spec, storage=args.storage,
                       study=f"{args.budget}-{policy.name}-seed{seed}",
                       trials=budget["trials"], device=budget["device"], quiet=True)


def trained_so_far(settings) -> int | None:
    """Trained trials of the study (None: no such study yet); reads, creates nothing.
    StudyMismatch (exit 2) when it was made with other settings (another budget)."""
    import optuna
    from reports.budget import is_trained
    from search.errors import StudyMismatch
    from search.study import recorded_spec
    from storage import open_store
    try:
        store = open_store(settings.storage, readonly=True)
    except Exception:   # no storage file yet
        return None
    if settings.study_name not in optuna.get_all_study_names(storage=store.optuna):
        return None
    study = optuna.load_study(study_name=settings.study_name, storage=store.optuna)
    recorded = recorded_spec(study)
    if recorded is not None:   # the data's path may differ; its content may not (run_process)
        differences = settings.spec.with_data(recorded.data_content).differences(recorded)
        if differences:
            raise StudyMismatch(f"study {settings.study_name!r} in {store.name} was made "
                                f"with other settings: {'; '.join(differences)}; use "
                                "another --storage for another budget")
    return sum(is_trained(t) for t in study.get_trials(deepcopy=False))


def run_all(args, budget: dict, out) -> int:
    """Run every (seed, policy) study that has trials left, seed by seed (so that a run cut
    short has all policies of its first seeds); the data of a seed is loaded once."""
    from search.cli.arguments import parse_fixed
    from search.progress import quiet_optuna
    from search.run import load_data, run_process
    quiet_optuna()
    fixed = parse_fixed(budget["model"], args.set)
    for seed in args.seeds:
        data = None
        for policy in args.policies:
            settings = settings_for(policy, seed, budget, args, fixed)
            done = trained_so_far(settings)
            if done is not None and done >= budget["trials"]:
                continue
            if data is None:
                data = load_data(settings, say=lambda line: print(line, file=out, flush=True))
            print(f"== {settings.study_name}: {done or 0} of {budget['trials']} trials "
                  f"trained; {policy.about}", file=out, flush=True)
            started = time.monotonic()
            result = run_process(settings, out, data=data)
            if result.interrupted:
                print("interrupted: run the same command to go on where it stopped",
                      file=sys.stderr)
                return 130
            problem = result.storage_error or result.stopped
            if problem:
                print(f"{settings.study_name}: {problem}", file=sys.stderr)
                return 1
            print(f"== {settings.study_name}: done in {time.monotonic() - started:.0f} s",
                  file=out, flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = budget_of(args)
    from search.errors import USER_ERRORS
    try:
        status = 0 if args.summary_only else run_all(args, budget, sys.stdout)
        if status:
            return status
        from efficiency_summary import write_summary
        names = {p.name: settings_for(p, 0, budget, args, {}).spec for p in args.policies}
        text = write_summary(args.storage, args.budget, names, args.seeds, Path(args.out))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command to go on where it stopped", file=sys.stderr)
        return 130
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
