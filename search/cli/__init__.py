"""The optuna-search command: argparse -> one library call per command; main(argv) -> int.

    optuna-search resnet18 --trials 30                 # TPE + median pruning, the report's space
    optuna-search mlp --grid activation=relu,sigmoid,tanh
    optuna-search report resnet18 --top 8              # Markdown table on stdout
    optuna-search info mlpmixer --set patch_size=8     # parameters per layer

Bad input (unknown model or parameter, an ill-typed value, a malformed storage URL, missing
data, --trials 0) gets one line on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Sequence

USAGE_ERROR = 2
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C
STORAGE_FAILED = 1  # a storage that stopped answering while the command ran


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Imported here, inside the handler: Ctrl-C during the imports (a second or more)
        # is an interrupt like any other.
        with _imports_interruptible():
            from search.cli.arguments import build_parser
            from search.cli.commands import COMMANDS, command_search
            from search.errors import USER_ERRORS
            from search.terminal import say
            from storage import StorageFault
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
    except KeyboardInterrupt:  # Ctrl-C before any trial started (loading data, say)
        print("optuna-search: interrupted; nothing was left running", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `optuna-search ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


@contextlib.contextmanager
def _imports_interruptible():
    """Ctrl-C while a library loads is an interrupt, even where the library turns it into
    an ImportError (numpy's compiled core cannot be loaded twice in one process)."""
    interrupted = []

    def note(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # signals are the main thread's; a caller in another thread handles its own
        return
    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    except Exception:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)

