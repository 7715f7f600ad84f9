"""One function per command of optuna-search: arguments in, a library call, an exit status.

search/cli/__init__.py imports this module inside its Ctrl-C handler, so an interrupt while the heavy
libraries load is one line and exit 130, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

from search.cli.arguments import UsageError, parse_fixed, run_settings, study_spec
from spaces import Config, apply_overrides
from storage import check_url, check_writable


def check_before_running(args, joining: bool = False) -> None:
    """What every command that runs trials checks before it writes anything (exit 2 if bad):
    the storage URL (a joining worker's study must exist), that its folders take writes,
    and the device."""
    check_url(args.storage, must_exist=joining)
    check_writable(args.storage)
    check_device(args.device)


def check_device(name: str) -> None:
    """--device cuda on a machine without a visible GPU is bad input, not a crash."""
    from search.train.trainer import pick_device
    try:
        pick_device(name)
    except RuntimeError as error:
        raise UsageError(f"{error}; use --device cpu (or auto)") from None


def run_placed(settings) -> int:
    """The search, on Ray when asked (connected first: a bad address writes nothing)."""
    from search.launch import run_search
    if not settings.ray:
        return run_search(settings)
    from search.ray_cluster import connected
    with connected(settings):
        return run_search(settings)


def command_search(args) -> int:
    spec = study_spec(args)
    settings = run_settings(args, spec)
    check_before_running(args)
    if args.dashboard:
        from search.dashboard import dashboard_beside
        with dashboard_beside(args.storage, port=args.dashboard_port):
            return run_placed(settings)
    return run_placed(settings)


def command_info(args) -> int:
    from search.train.models import build, parameter_count, parameters_per_layer
    fixed = parse_fixed(args.model, args.set)
    model = build(args.model, apply_overrides(Config(), fixed))
    rows = parameters_per_layer(model)
    width = max(len(name) for name, _ in rows)
    for name, count in rows:
        print(f"{name:<{width}}  {count:>12,}")
    print(f"{'total':<{width}}  {parameter_count(model):>12,}")
    return 0


def command_studies(args) -> int:
    from reports.studies import list_studies  # its read-only open refuses a missing file
    table = list_studies(args.storage)
    print(table.to_markdown(index=False) if len(table) else "no studies in " + args.storage)
    return 0


def command_worker(args) -> int:
    from search.study import load_spec
    check_before_running(args, joining=True)  # a worker joins a study; it never makes one
    settings = run_settings(args, load_spec(args.storage, args.study), join=True)
    return run_placed(settings)


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
    check_before_running(args)
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
