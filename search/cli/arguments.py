"""The command line's grammar: argparse parsers for every command, typed option values, and
--set / --grid parsed against the model's search space. Errors raise UsageError or
ConfigError, which search.cli turns into one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any, Sequence

from search.errors import UsageError
from spaces import MODEL_NAMES, ConfigError, apply_overrides, get_space, parse_value
from spaces.defaults import parse_assignment
from search.settings import DEFAULT_EPOCHS, RunSettings, StudySpec, default_pruner
from storage import DEFAULT_PATIENCE_SECONDS, DEFAULT_STORAGE


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def experiment_numbers(text: str) -> tuple[int, ...]:
    try:
        numbers = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        numbers = ()
    if not numbers or not set(numbers) <= {1, 2, 3, 4, 5}:
        raise argparse.ArgumentTypeError(f"{text!r}: give experiment numbers 1-5, e.g. 1,3")
    return numbers


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(text)


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"sqlite:///FILE.db, journal:///FILE.log or postgresql://... "
                        f"(default {DEFAULT_STORAGE})")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def checkpoint_seconds(text: str) -> float:
    from search.train.checkpoint import check_every_seconds  # torch: only when the option is given
    try:
        return check_every_seconds(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error) if "interval" in str(error)
                                         else f"{text!r} is not a number of seconds") from None


def add_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=checkpoint_seconds, default=60.0,
                   metavar="SECONDS",
                   help="save a running trial's state at most this often, off the training "
                        "loop, so a killed trial's retry loses at most this much training; "
                        "0: after every epoch (default 60; none on a journal file, which has "
                        "no heartbeat to retry from)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="one line per finished trial (for logs): no progress bars, no line per "
                        "epoch")


def add_capture(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capture", choices=("auto", "off"), default="auto",
                   help="CUDA graphs of the training and evaluation steps: auto captures them "
                        "on a GPU (several times faster at small batches; a capture that fails "
                        "warns once and the trial trains eagerly), off never (default auto; "
                        "the CPU always runs eagerly)")


def add_patience(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-patience", type=seconds, default=DEFAULT_PATIENCE_SECONDS,
                   metavar="SECONDS",
                   help="how long a search rides out its database being away (a restart, a "
                        "failover) before it stops with one line and exit 1; the same "
                        f"command then resumes (default {DEFAULT_PATIENCE_SECONDS:g})")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="cifar10",
                   help="cifar10 (torchvision, under --data-dir), synthetic, or a folder / "
                        ".tar.gz with train/<class>/ and test/<class>/ (default cifar10)")
    p.add_argument("--data-dir", default="data", help="where cifar10 lives (default ./data)")
    p.add_argument("--train-subset", type=positive_int, metavar="N",
                   help="a class-balanced subset of N training images, for quick runs")
    p.add_argument("--test-subset", type=positive_int, metavar="N",
                   help="a class-balanced subset of N test images, for quick runs")
    p.add_argument("--val-size", type=positive_int, default=5000, metavar="N",
                   help="validation images held out of training (at most a tenth; default 5000)")


TRIALS_HELP = ("the study's target: it ends with N finished (complete or pruned) trials, "
               "counted in the storage whichever process or machine ran them; the same "
               "command after an interruption runs only what is missing, a larger N "
               "extends the study; failed trials do not count, their retries do (default: "
               "the study's target, 30 for a new study; a grid runs each point once)")


def add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=positive_int, metavar="N", help=TRIALS_HELP)
    add_storage(p)
    p.add_argument("--study", help="study name (default: the model's; a grid gets its own)")
    p.add_argument("--epochs", type=positive_int,
                   help=f"epochs per trial (default {DEFAULT_EPOCHS}; or --set epochs=N)")
    add_data(p)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="tpe", choices=("tpe", "random", "gp"))
    p.add_argument("--pruner", choices=("hyperband", "median", "none"),
                   help="default: the study's; for a new one hyperband (a --grid: median; "
                        "measured against median pruning and random search: bench/README.md)")
    p.add_argument("--space", default="report", choices=("report", "wide"),
                   help="report: the report's exact lists; wide: log-uniform lr/weight decay")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a parameter, e.g. --set optimizer=adam (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="run every value (every combination) once, e.g. --grid lr=0.1,0.01")
    p.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                   help="start no trial after this many seconds (each process runs one at least)")
    p.add_argument("--enqueue-report", action="store_true",
                   help="first run the report's published top configurations that fit")
    add_placement(p)
    add_capture(p)
    add_patience(p)
    add_checkpoints(p)
    add_quiet(p)
    p.add_argument("--dashboard", action="store_true",
                   help="serve optuna-dashboard on 127.0.0.1 while the search runs")
    p.add_argument("--dashboard-port", type=port_number, default=8080, metavar="PORT",
                   help="the dashboard's port (default 8080; 0 picks a free one)")


def gpu_fraction(text: str) -> float:
    """What Ray can place: a fraction of one GPU (0 < F <= 1) or a whole number of GPUs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or (value > 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(
            f"{text}: Ray places a fraction of one GPU (0 < F <= 1, e.g. 0.25: four trials "
            "share a GPU) or a whole number of GPUs")
    return value


def add_placement(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="processes on this machine running trials of the study (default 1); "
                        "with --ray: trials at once on the cluster")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the trials on Ray (pip install 'optuna-search[ray]'): local "
                        "starts a cluster for this run; auto or HOST:PORT joins one started "
                        "with `ray start`")
    p.add_argument("--gpus-per-trial", type=gpu_fraction, metavar="F",
                   help="with --ray: GPUs per trial (0.25: four trials share a GPU; "
                        "default 1 where the cluster has GPUs, else 0)")


def build_parser() -> Parser:
    parser = Parser(prog="optuna-search",
                    description="Hyperparameter search for CIFAR-10 classifiers with Optuna",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"optuna-search {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for model in MODEL_NAMES:
        p = commands.add_parser(model, help=f"search {model}'s hyperparameters",
                                description=f"Run (or resume) an Optuna study of {model}. "
                                f"Example: optuna-search {model} --trials 30")
        add_search_options(p)

    p = commands.add_parser("info", help="parameters per layer of a model",
                            description="Example: optuna-search info mlpmixer --set patch_size=8")
    p.add_argument("model", choices=MODEL_NAMES)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    p = commands.add_parser("studies", help="list the studies in a storage",
                            description="Example: optuna-search studies --storage sqlite:///x.db")
    add_storage(p)

    p = commands.add_parser("worker", help="join an existing study (another machine, a "
                            "Slurm task, a Kubernetes pod)",
                            description="Run trials of a study that `optuna-search MODEL` made, "
                            "with its model, space, --set values, grid, epochs and data options "
                            "(read from the study), until the study's target is met. "
                            "Example: optuna-search worker resnet18 "
                            "--storage postgresql://USER:PASSWORD@HOST/DB --workers 4")
    p.add_argument("study", help="study name, e.g. resnet18 (see optuna-search studies)")
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="set the study's target to N finished trials (default: keep it)")
    add_storage(p)
    p.add_argument("--data", help="where this machine has the study's data (default: the "
                   "source the study was made with)")
    p.add_argument("--data-dir", default="data", help="where cifar10 lives (default ./data)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                   help="start no trial after this many seconds (each process runs one at least)")
    add_placement(p)
    add_capture(p)
    add_patience(p)
    add_checkpoints(p)
    add_quiet(p)

    p = commands.add_parser("audit", help="train pruned trials of a study to the full budget: "
                            "would they have won?",
                            description="Train to the study's full epochs the K pruned trials "
                            "that looked best when they were stopped (or K at random), each with "
                            "its exact configuration, in the sibling study STUDY-audit (STUDY "
                            "itself is never changed); then `optuna-search report STUDY` has a "
                            "pruning-audit section. Rerun to resume: nothing is trained twice. "
                            "Example: optuna-search audit mlp --pruned 3")
    p.add_argument("study", help="study name, e.g. resnet18 (see optuna-search studies)")
    p.add_argument("--pruned", type=positive_int, default=3, metavar="K",
                   help="how many pruned trials to train to the end (default 3); a larger K "
                        "later adds trials, those audited already stay")
    p.add_argument("--random", action="store_true",
                   help="choose the K pruned trials at random (seeded by --seed), not the ones "
                        "that looked best when they were stopped")
    p.add_argument("--seed", type=int, default=0, help="the --random choice's seed (default 0)")
    add_storage(p)
    p.add_argument("--data", help="where this machine has the study's data (default: the "
                   "source the study was made with)")
    p.add_argument("--data-dir", default="data", help="where cifar10 lives (default ./data)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="processes on this machine training the audit's trials (default 1)")
    p.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                   help="start no trial after this many seconds (each process runs one at least)")
    add_capture(p)
    add_patience(p)
    add_checkpoints(p)
    add_quiet(p)

    p = commands.add_parser("dashboard", help="watch the studies in a browser (optuna-dashboard)",
                            description="Serve optuna-dashboard on a storage and its artifacts. "
                            "Example: optuna-search dashboard --port 8080; then open "
                            "http://127.0.0.1:8080/dashboard")
    add_storage(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; the dashboard has no login)")
    p.add_argument("--port", type=port_number, default=8080, help="default 8080; 0: any free")

    p = commands.add_parser("report", help="the top trials of a study as a table (or a page)",
                            description="Example: optuna-search report resnet18 --top 8 "
                            "(a table that fits a terminal; Markdown into a pipe or a file); "
                            "--format html -o report.html writes the "
                            "table and every figure on one offline page")
    p.add_argument("study", help="study name, e.g. resnet18 (see optuna-search studies)")
    p.add_argument("--top", type=positive_int, default=8, help="rows to show (default 8)")
    p.add_argument("--format", choices=("text", "markdown", "csv", "html"),
                   help="text: a table that fits a terminal (the default on one); markdown: "
                        "every column, for pasting (the default into a file or a pipe); "
                        "csv: full precision; html: one offline page with every figure")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--include-pruned", action="store_true",
                   help="rank pruned and failed trials too, with a state column")
    add_storage(p)

    p = commands.add_parser("plots", help="a study's figures as offline HTML (+ PNG)",
                            description="Example: optuna-search plots resnet18 -o figures/ "
                            "(learning curves, patch-size figures, first-layer pictures, "
                            "Optuna's history / importances / parallel coordinates)")
    p.add_argument("study", help="study name, e.g. resnet18 (see optuna-search studies)")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="folder to write")
    add_storage(p)

    p = commands.add_parser("reproduce", help="the report's five experiments, then REPORT.md",
                            description="Run (or resume) the report's five experiments as five "
                            "studies and write DIR/REPORT.md, DIR/figures/, DIR/report.html. "
                            "Example: optuna-search reproduce -o reproduction --budget small")
    p.add_argument("-o", "--output", metavar="DIR", default="reproduction")
    p.add_argument("--budget", choices=("small", "full"), default="small",
                   help="small: subset data, 2 epochs, 4 trials per search (minutes on a CPU); "
                        "full: the report's 30 epochs and 30 trials")
    p.add_argument("--epochs", type=positive_int, help="override the budget's epochs")
    p.add_argument("--trials", type=positive_int, help="override the budget's trials per search")
    p.add_argument("--experiments", type=experiment_numbers, default=(1, 2, 3, 4, 5),
                   metavar="N,N", help="which of the five to run, e.g. 1,3 (the two that fit "
                   "a CPU at the full budget); default all")
    add_data(p)
    p.set_defaults(val_size=None)  # None: the budget's validation size
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--seed", type=int, default=0)
    add_storage(p)
    return parser


def package_version() -> str:
    """The installed package's version (pyproject.toml's, as pip recorded it)."""
    try:
        return metadata.version("optuna-search")
    except metadata.PackageNotFoundError:  # run from a checkout that pip never installed
        return "(not installed: version unknown)"


def parse_fixed(model: str, assignments: Sequence[str]) -> dict[str, Any]:
    space = get_space(model)
    fixed = {}
    for text in assignments:
        key, value = parse_assignment(text)
        space.check_names([key])
        fixed[key] = parse_value(key, value)
    apply_overrides(space.defaults, fixed)  # checks each value is sane
    return fixed


def parse_grid(model: str, assignments: Sequence[str], fixed: dict) -> dict[str, list] | None:
    if not assignments:
        return None
    space, grid = get_space(model), {}
    for text in assignments:
        key, values = parse_assignment(text)
        space.check_names([key])
        if key in fixed:
            raise ConfigError(f"{key} is both --set and --grid; choose one")
        options = [parse_value(key, v) for v in values.split(",") if v.strip()]
        if not options:
            raise ConfigError(f"--grid {text!r} has no values; e.g. --grid {key}=V1,V2")
        for option in options:
            apply_overrides(space.defaults, {**fixed, key: option})
        grid[key] = list(dict.fromkeys(options))
    return grid


def study_spec(args) -> StudySpec:
    """The spec a search command asks for, resolved once: `epochs` from --epochs or
    --set epochs=N (not both, unless they agree), never left in the --set values."""
    fixed = parse_fixed(args.command, args.set)
    grid = parse_grid(args.command, args.grid, fixed)
    epochs = fixed.pop("epochs", None)
    if epochs is not None and args.epochs is not None and epochs != args.epochs:
        raise UsageError(f"--epochs {args.epochs} and --set epochs={epochs} disagree; give one")
    if grid and args.enqueue_report:  # a grid runs its own points, nothing else
        raise UsageError("--enqueue-report does not combine with --grid")
    return StudySpec(
        model=args.command, space=args.space, fixed=fixed, grid=grid,
        epochs=epochs or args.epochs or DEFAULT_EPOCHS, data=args.data,
        train_subset=args.train_subset, test_subset=args.test_subset, val_size=args.val_size,
        seed=args.seed, sampler=args.sampler, pruner=args.pruner or default_pruner(grid))


def run_settings(args, spec: StudySpec, join: bool = False) -> RunSettings:
    """This run's settings: the spec, plus what only this run decides."""
    if args.gpus_per_trial is not None and not args.ray:
        raise UsageError("--gpus-per-trial places trials on Ray; add --ray local|auto|HOST:PORT")
    return RunSettings(
        spec=spec, storage=args.storage, study=args.study, trials=args.trials,
        data_path=args.data if join else None, data_dir=args.data_dir, device=args.device,
        workers=args.workers, timeout=args.timeout,
        enqueue_report=getattr(args, "enqueue_report", False), ray=args.ray,
        gpus_per_trial=args.gpus_per_trial, join=join, storage_patience=args.storage_patience,
        pruner_given=getattr(args, "pruner", None) is not None,
        checkpoint_every=args.checkpoint_every, quiet=args.quiet, capture=args.capture)
