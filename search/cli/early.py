"""What the command line checks before it imports torch and Optuna (4-14 s on a busy CPU):
the --data path, so a missing, empty, truncated or ill-laid-out source is refused in one
line within a second or so of Enter (search/train/sources.py). The full parse
(search/cli/arguments.py) comes after; this reads argv the way argparse will."""
from __future__ import annotations

from typing import Sequence

from search.train.sources import check_source
from spaces import MODEL_NAMES

TAKES_DATA = (*MODEL_NAMES, "worker", "reproduce", "audit")


def data_option(argv: Sequence[str]) -> str | None:
    """The --data value argparse will see (the last one given), or None: no --data, a
    command without it, or --help (which answers whatever else is on the line)."""
    if not argv or argv[0] not in TAKES_DATA:
        return None
    value, options = None, list(argv[1:])
    for i, token in enumerate(options):
        if token == "--":   # what follows is positional
            break
        if token in ("-h", "--help"):
            return None
        if token == "--data" and i + 1 < len(options) and not options[i + 1].startswith("-"):
            value = options[i + 1]
        elif token.startswith("--data="):
            value = token[len("--data="):]
    return value


def check_data_first(argv: Sequence[str]) -> None:
    """Raise DataError (one line) when the command's --data is a path that cannot serve."""
    source = data_option(argv)
    if source is not None:
        check_source(source)
