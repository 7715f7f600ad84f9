"""One function per command of optuna-search: arguments in, a library call, an exit status.

search/cli/__init__.py imports this module inside its Ctrl-C handler, so an interrupt while
the heavy libraries load is one line and exit 130, never a traceback.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from search.cli.arguments import UsageError, parse_fixed, run_settings, study_spec
from search.settings import RunSettings
from search.terminal import DEFAULT_COLUMNS, columns, say
from search.train.sources import check_source
from spaces import Config, apply_overrides
from storage import check_url, check_writable, redact


def check_before_running(args, data: str, joining: bool = False,
                         starting: str | None = None) -> None:
    """What every command that runs trials checks before it writes anything (exit 2 if bad):
    the storage URL (a joining worker's study must exist), that its folders take writes,
    the data source (a worker's may come from the study; an archive is read once per
    process, search/train/sources.py), and the device. `starting`, the command's first line,
    is printed once the arguments are good and before torch loads (the device check imports
    it: 3-5 s on a busy CPU), so a person sees it within a couple of seconds of Enter."""
    check_url(args.storage, must_exist=joining)
    check_writable(args.storage)
    check_source(data)
    if starting:
        say(sys.stdout, starting)
    check_device(args.device)


def starting_line(settings: RunSettings, joining: bool = False) -> str:
    """What this command is about to do, said before the libraries load: "study 'mlp' in
    optuna-search.db: 12 trials of 4 epochs; loading..." (the data is named once loaded)."""
    spec = settings.spec
    target = (f"{settings.trials} trials" if settings.trials else
              f"{len(spec.grid_points)} grid points" if spec.grid else "its target")
    where = (settings.storage[len("sqlite:///"):] if settings.storage.startswith("sqlite:///")
             else redact(settings.storage))   # a SQLite study is a file: name the file
    return (f"{'joining ' if joining else ''}study {settings.study_name!r} in {where}: "
            f"{target} of {spec.epochs} epochs; loading...")


def check_device(name: str) -> None:
    """--device cuda on a machine without a visible GPU is bad input, not a crash."""
    from search.train.trainer import pick_device
    try:
        pick_device(name)
    except RuntimeError as error:
        raise UsageError(f"{error}; use --device cpu (or auto)") from None


def command_search(args) -> int:
    """The search, on Ray when asked (connected first: a bad address writes nothing), with
    the dashboard beside it when asked."""
    settings = run_settings(args, study_spec(args))
    check_before_running(args, settings.data_source, starting=starting_line(settings))
    from search.launch import run_search   # torch: after the first line
    with contextlib.ExitStack() as beside:
        if args.dashboard:
            from search.dashboard import dashboard_beside
            beside.enter_context(dashboard_beside(args.storage, port=args.dashboard_port))
        if settings.ray:
            from search.ray_cluster import connected
            beside.enter_context(connected(settings))
        return run_search(settings)


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
    from reports.studies import list_studies, studies_text  # a read-only open: refuses a
    table = list_studies(args.storage)                        # missing file
    print(studies_text(table) if len(table) else "no studies in " + args.storage)
    return 0


def command_worker(args) -> int:
    from search.study import load_spec
    from storage import open_store
    check_url(args.storage, must_exist=True)  # a worker joins a study; it never makes one
    spec = load_spec(open_store(args.storage, readonly=True), args.study)
    settings = run_settings(args, spec, join=True)
    check_before_running(args, settings.data_source, joining=True,
                         starting=starting_line(settings, joining=True))
    from search.launch import run_search   # torch: after the first line
    if not settings.ray:
        return run_search(settings)
    from search.ray_cluster import connected
    with connected(settings):
        return run_search(settings)


def command_audit(args) -> int:
    """Choose the pruned trials (reading the study, before torch loads), then train them in
    the audit study with the one run loop; a rerun with everything trained says so at once."""
    check_url(args.storage, must_exist=True)   # an audit reads a study; it never makes one
    check_writable(args.storage)
    if sys.stdout.isatty():
        say(sys.stdout, f"reading study {args.study!r} in {redact(args.storage)}...")
    from search.audit import nothing_to_train, plan_audit, plan_lines, run_audit, say_findings
    from storage import open_store
    store = open_store(args.storage, patience=args.storage_patience)
    plan = plan_audit(store, args.study, args.pruned, args.seed if args.random else None)
    for line in plan_lines(plan):
        say(sys.stdout, line)
    if nothing_to_train(store, plan):
        say(sys.stdout, "every one of them is audited already; nothing to train")
        say_findings(store, plan.study, sys.stdout)
        return 0
    settings = RunSettings(
        spec=plan.spec, storage=args.storage, study=plan.name, data_path=args.data,
        data_dir=args.data_dir, device=args.device, workers=args.workers,
        timeout=args.timeout, storage_patience=args.storage_patience,
        checkpoint_every=args.checkpoint_every, quiet=args.quiet, capture=args.capture)
    check_source(settings.data_source)   # the study's data, unless --data: before torch loads
    check_device(args.device)
    return run_audit(settings, plan, sys.stdout)


def command_dashboard(args) -> int:
    from search.dashboard import serve
    return serve(args.storage, host=args.host, port=args.port)


def command_report(args) -> int:
    from reports.page import render_report
    if args.format == "html" and not args.output:
        raise UsageError("--format html needs -o FILE (the page embeds plotly.js, ~5 MB)")
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise UsageError(f"folder {Path(args.output).parent} does not exist")
    # On a terminal a table that fits it; into a file or a pipe the whole Markdown table.
    fmt = args.format or ("text" if not args.output and sys.stdout.isatty() else "markdown")
    text = render_report(args.storage, args.study, args.top, fmt, args.include_pruned,
                         width=columns(sys.stdout) or DEFAULT_COLUMNS)
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
    from search.reproduce import plan, run_reproduction
    check_before_running(args, args.data)
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"{args.output} exists and is not a folder")
    return run_reproduction(plan(args), Path(args.output))


COMMANDS = {"reproduce": command_reproduce,
            "info": command_info, "studies": command_studies, "dashboard": command_dashboard,
            "report": command_report, "plots": command_plots, "worker": command_worker,
            "audit": command_audit}
