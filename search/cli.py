"""The optuna-search command: argparse -> one library call per command; main(argv) -> int.

    optuna-search resnet18 --trials 30                 # TPE + median pruning, the report's space
    optuna-search mlp --grid activation=relu,sigmoid,tanh
    optuna-search report resnet18 --top 8              # Markdown table on stdout
    optuna-search info mlpmixer --set patch_size=8     # parameters per layer

Bad input (unknown model or parameter, an ill-typed value, a malformed storage URL, missing
data, --trials 0) gets one line on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from search.arguments import UsageError, build_parser, parse_fixed, parse_grid
from spaces import ConfigError, Config, apply_overrides
from storage import StorageError, check_url

USAGE_ERROR = 2
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C

def check_device(name: str) -> None:
    """--device cuda on a machine without a visible GPU is bad input, not a crash."""
    from search.trainer import pick_device
    try:
        pick_device(name)
    except RuntimeError as error:
        raise UsageError(f"{error}; use --device cpu (or auto)") from None


def command_search(args) -> int:
    from search.study import SearchSettings, run_search
    fixed = parse_fixed(args.command, args.set)
    grid = parse_grid(args.command, args.grid, fixed)
    if grid and args.enqueue_report:  # a grid runs its own points, nothing else
        raise UsageError("--enqueue-report does not combine with --grid")
    check_url(args.storage)
    check_device(args.device)
    trials = args.trials if (args.trials or grid) else 30
    settings = SearchSettings(
        model=args.command, trials=trials, storage=args.storage, study=args.study,
        epochs=args.epochs, data=args.data, data_dir=args.data_dir,
        train_subset=args.train_subset, test_subset=args.test_subset, val_size=args.val_size,
        device=args.device, seed=args.seed, sampler=args.sampler, pruner=args.pruner,
        space=args.space, fixed=fixed, grid=grid, timeout=args.timeout,
        enqueue_report=args.enqueue_report, workers=args.workers)
    if args.dashboard:
        from search.dashboard import dashboard_beside
        with dashboard_beside(args.storage, port=args.dashboard_port):
            return run_search(settings)
    return run_search(settings)


def command_info(args) -> int:
    from search.models import build, parameter_count, parameters_per_layer
    fixed = parse_fixed(args.model, args.set)
    model = build(args.model, apply_overrides(Config(), fixed))
    rows = parameters_per_layer(model)
    width = max(len(name) for name, _ in rows)
    for name, count in rows:
        print(f"{name:<{width}}  {count:>12,}")
    print(f"{'total':<{width}}  {parameter_count(model):>12,}")
    return 0


def command_studies(args) -> int:
    from search.study import list_studies
    check_url(args.storage, must_exist=True)
    table = list_studies(args.storage)
    print(table.to_markdown(index=False) if len(table) else "no studies in " + args.storage)
    return 0


def command_worker(args) -> int:
    from search.workers import run_workers, settings_from_study
    check_url(args.storage)
    check_device(args.device)
    settings = settings_from_study(
        args.storage, args.study, trials=args.trials, workers=args.workers, epochs=args.epochs,
        data=args.data, data_dir=args.data_dir, train_subset=args.train_subset,
        test_subset=args.test_subset, val_size=args.val_size, device=args.device,
        timeout=args.timeout)
    return run_workers(settings, join=True)


def command_dashboard(args) -> int:
    from search.dashboard import serve
    return serve(args.storage, host=args.host, port=args.port)


def command_report(args) -> int:
    from reports.page import render_report
    if args.format == "html" and not args.output:
        raise UsageError("--format html needs -o FILE (the page embeds plotly.js, ~5 MB)")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise UsageError(f"folder {Path(args.output).parent} does not exist")
    text = render_report(args.storage, args.study, args.top, args.format, args.include_pruned)
    text = text if text.endswith("\n") else text + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def command_plots(args) -> int:
    from reports.page import write_plots
    written = write_plots(args.storage, args.study, args.output)
    for path in written.paths:
        print(path)
    for note in written.notes:
        print(f"note: {note}")
    return 0


def command_reproduce(args) -> int:
    from search.reproduce import ReproduceSettings, run_reproduction
    check_url(args.storage)
    check_device(args.device)
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"{args.output} exists and is not a folder")
    return run_reproduction(ReproduceSettings(
        out_dir=Path(args.output), budget=args.budget, epochs=args.epochs, trials=args.trials,
        data=args.data, data_dir=args.data_dir, storage=args.storage,
        train_subset=args.train_subset, test_subset=args.test_subset,
        val_size=args.val_size,
        device=args.device, seed=args.seed))


COMMANDS = {"reproduce": command_reproduce,
            "info": command_info, "studies": command_studies, "dashboard": command_dashboard,
            "report": command_report, "plots": command_plots, "worker": command_worker}


def main(argv: Sequence[str] | None = None) -> int:
    from reports.table import ReportError
    from search.dashboard import DashboardError
    from search.data import DataError
    from search.study import StudyMismatch
    try:
        args = build_parser().parse_args(argv)
        handler = COMMANDS.get(args.command, command_search)
        return handler(args)
    except (UsageError, ConfigError, StorageError, DataError, StudyMismatch,
            DashboardError, ReportError) as error:
        print(f"optuna-search: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C before any trial started (loading data, say)
        print("optuna-search: interrupted; nothing was left running", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
