"""The optuna-search command: argparse -> one library call per command; main(argv) -> int.

    optuna-search resnet18 --trials 30                 # TPE + median pruning, the report's space
    optuna-search mlp --grid activation=relu,sigmoid,tanh
    optuna-search report resnet18 --top 8              # the best trials as a table
    optuna-search info mlpmixer --set patch_size=8     # parameters per layer

Bad input (unknown model or parameter, an ill-typed value, a malformed storage URL, missing
or broken data, --trials 0) gets one line on stderr and exit status 2, before anything is
written; a bad --data path before the heavy imports too.
"""
from __future__ import annotations

import gc
import signal
import sys
import threading
from typing import NoReturn, Sequence

USAGE_ERROR = 2
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C
STORAGE_FAILED = 1  # a storage that stopped answering while the command ran


def main(argv: Sequence[str] | None = None) -> int:
    interrupted: list[int] = []

    def note(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    # SIGINT raises KeyboardInterrupt for the whole command, even where the shell started it
    # with SIGINT ignored (nohup, a script's `cmd &`): `kill -INT` always stops a search (the
    # run loop and the launchers install their own handlers on top of this one). Installed
    # inside the `try`: a Ctrl-C the moment it is on is an interrupt like any other.
    ours = threading.current_thread() is threading.main_thread()  # signals are its alone
    previous, unraisable = signal.getsignal(signal.SIGINT), sys.unraisablehook

    def lost(info):  # where Python cannot raise (a finalizer, an import's module-lock
        # callback) it prints "Exception ignored" and goes on: the Ctrl-C is noted, so quiet
        if not (info.exc_type is KeyboardInterrupt and interrupted):
            unraisable(info)

    try:
        if ours:
            sys.unraisablehook = lost
            signal.signal(signal.SIGINT, note)
        return _command(argv, interrupted)
    except KeyboardInterrupt:  # Ctrl-C before any trial started (loading data, say)
        print("optuna-search: interrupted; nothing was left running", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `optuna-search ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    finally:
        if ours and previous is not None:
            signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = unraisable


def entry(argv: Sequence[str] | None = None) -> NoReturn:
    """The optuna-search script and `python -m search.cli`: main(), then exit without the
    interpreter collecting every object torch and optuna made (8-13 s on 2 loaded cores after
    a search, measured: past a scheduler's grace after SIGTERM, for nothing)."""
    code = main(argv)
    gc.freeze()  # what is alive now is left to the exit; atexit handlers still run
    ray_local = sys.modules.get("search.ray_local")  # loaded: --ray was given
    if ray_local is not None:
        ray_local.exit_if_killed(code)
    sys.exit(code)


def _command(argv: Sequence[str] | None, interrupted: list[int]) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # imported here, under the handler: Ctrl-C during the imports (a second or more)
        # is an interrupt like any other. The light modules first: a bad --data is refused
        # before torch and Optuna load (search/cli/early.py).
        from search.cli.early import check_data_first
        from search.terminal import say
        from search.train.errors import DataError
        try:
            check_data_first(argv)
        except DataError as error:
            say(sys.stderr, f"optuna-search: error: {error}")
            return USAGE_ERROR
        from search.cli.arguments import build_parser
        from search.cli.commands import COMMANDS, command_search
        from search.errors import USER_ERRORS
        from storage import StorageFault
    except Exception:
        if interrupted:  # a library that turned Ctrl-C into an ImportError (numpy's core
            raise KeyboardInterrupt from None  # cannot be loaded twice in one process)
        raise
    if interrupted:  # Ctrl-C during the imports, lost where Python could not raise it
        raise KeyboardInterrupt
    try:
        args = build_parser().parse_args(argv)
        handler = COMMANDS.get(args.command, command_search)
        return handler(args)
    except USER_ERRORS as error:
        say(sys.stderr, f"optuna-search: error: {error}")
        return USAGE_ERROR
    except StorageFault as fault:  # the storage failed past its patience (not bad input)
        say(sys.stderr, f"optuna-search: error: {fault}")
        return STORAGE_FAILED
