"""search.child: a `--workers` process stops at a Ctrl-C at any moment of its start-up with
exit 130 and says nothing of its own: the launcher prints one line. A Ctrl-C reaches a worker
twice (the terminal's SIGINT to the group, the launcher's forwarded one); the second must
never land outside the worker's `try` as a traceback."""
from __future__ import annotations

import os
import signal

from helpers import (TINY, children_of, cmdline, in_workers, maps, query, run_cli,
                     wait_until)

# In each `--workers` process: a SIGINT as it starts to leave (the moment the second SIGINT
# of a Ctrl-C landed in 2 of 30 tries: "worker 1 exited with status 1 before it reported").
SECOND_SIGINT_IN_LEAVE = """
    import signal
    leave = module.leave

    def leaving(code, messages, parent):
        print("a second SIGINT as the worker leaves", flush=True)
        signal.raise_signal(signal.SIGINT)   # its handler runs before raise_signal returns
        return leave(code, messages, parent)

    module.leave = leaving
"""


def importing_workers(parent: int) -> list[int]:
    """The --workers children of `parent` that are still loading torch (not yet mapped)."""
    pids = [pid for pid in children_of(parent) if "spawn_main" in cmdline(pid)]
    return [pid for pid in pids if "libtorch" not in maps(pid)]


def test_a_second_sigint_as_a_worker_leaves_is_no_traceback(tmp_path):
    db = tmp_path / "twice.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "4", "--storage", f"sqlite:///{db}",
                      *TINY], **in_workers(tmp_path / "site", "search.child",
                                           SECOND_SIGINT_IN_LEAVE))
    try:
        wait_until(lambda: len(importing_workers(parent.pid)) == 2, what="2 workers importing")
        os.killpg(parent.pid, signal.SIGINT)  # a terminal's Ctrl-C: the parent and each worker
        out, err = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.communicate()
    assert out.count("a second SIGINT as the worker leaves") == 2   # both workers had it
    assert parent.returncode == 130, err
    assert "Traceback" not in err and "before it reported" not in err, err
    assert len(err.strip().splitlines()) == 1, err   # the launcher's line alone
    assert query(db, "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", 0) == 0
