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

from search import interrupts  # the standard library only: on before torch and optuna load

USAGE_ERROR = 2
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C
STORAGE_FAILED = 1  # a storage that stopped answering while the command ran


def main(argv: Sequence[str] | None = None) -> int:
    return _main(argv, for_good=False)


def _main(argv: Sequence[str] | None, for_good: bool) -> int:
    """The command under our SIGINT/SIGTERM handler (search/interrupts.py): the first signal
    raises KeyboardInterrupt for the whole command, even where the shell started it with
    SIGINT ignored (nohup, a script's `cmd &`): `kill -INT` always stops a search (the run
    loop and the launchers install their own handlers on top of this one). `for_good`: the
    handler stays after the command (the process exits next: a signal then is only noted)."""
    interrupts.forget_stops()   # a new command (tests run several in one process)
    stop = interrupts.Interrupts()
    ours = threading.current_thread() is threading.main_thread()  # signals are its alone
    unraisable = sys.unraisablehook
    previous = {}
    try:
        if ours:  # where Python cannot raise (a finalizer, an import's module-lock callback)
            # it prints "Exception ignored" and goes on: a stop's KeyboardInterrupt is quiet
            sys.unraisablehook = interrupts.unheard_lost_interrupts(unraisable)
            previous = stop.install()  # inside the `try`: a signal the moment it is on is
        with stop.raising():           # an interrupt like any other
            return _command(argv)
    except KeyboardInterrupt:  # a stop before any trial started (loading data, say)
        print("optuna-search: interrupted; nothing was left running", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `optuna-search ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    finally:
        if not for_good:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, handler in previous.items():
                if handler is not None:
                    signal.signal(signum, handler)
            sys.unraisablehook = unraisable


def entry(argv: Sequence[str] | None = None) -> NoReturn:
    """The optuna-search script and `python -m search.cli`: main(), then exit without the
    interpreter collecting every object torch and optuna made (8-13 s on 2 loaded cores after
    a search, measured: past a scheduler's grace after SIGTERM, for nothing)."""
    code = _main(argv, for_good=True)
    # The command is over, its status decided: a stop now changes nothing, so it is ignored.
    # Not left to Python, which puts the default actions back as the interpreter shuts down
    # (a SIGINT or SIGTERM there killed a search that had finished: exit -2 or -15; so did
    # the SIGALRM of a raise that waited, -14).
    for signum in (*interrupts.STOP_SIGNALS, signal.SIGALRM):
        signal.signal(signum, signal.SIG_IGN)
    gc.freeze()  # what is alive now is left to the exit; atexit handlers still run
    ray_local = sys.modules.get("search.ray_local")  # loaded: --ray was given
    if ray_local is not None:
        ray_local.exit_if_killed(code)
    sys.exit(code)


def _command(argv: Sequence[str] | None) -> int:
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
        if interrupts.stop_requested():  # a library that turned Ctrl-C into an ImportError
            raise KeyboardInterrupt from None  # (numpy's core cannot be loaded twice)
        raise
    interrupts.check_stop()  # Ctrl-C during the imports, lost where Python could not raise it
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
