"""search.child: a `--workers` process stops at a Ctrl-C at any moment of its start-up with
exit 130 and says nothing of its own: the launcher prints one line. A Ctrl-C reaches a worker
twice (the terminal's SIGINT to the group, the launcher's forwarded one); the second must
never land outside the worker's `try` as a traceback."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from helpers import TINY, in_workers, query, run_cli, wait_for_running, wait_until

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


def test_a_second_sigint_as_a_worker_leaves_is_no_traceback(tmp_path):
    """(While a worker imports it leaves at once, without `leave`: the Ctrl-C comes once
    both train.)"""
    db = tmp_path / "twice.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "4", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY],
                     **in_workers(tmp_path / "site", "search.child", SECOND_SIGINT_IN_LEAVE))
    try:
        wait_for_running(db, 2, seconds=240)
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


# In each `--workers` process, inside torch's own import (torch/__init__.py imports
# torch.torch_version): a mark, then 60 s more of import. A KeyboardInterrupt waits while
# torch's code runs (search/interrupts.py), so a worker stopped here as a KeyboardInterrupt
# would stop only once its import is over.
SLOW_TORCH_IMPORT = """
    import os, time
    open(os.path.join(os.environ["MARKS"], str(os.getpid())), "w").close()
    time.sleep(60)
"""


def test_a_ctrl_c_while_the_workers_import_torch_stops_them_at_once(tmp_path):
    db, marks = tmp_path / "importing.db", tmp_path / "marks"
    marks.mkdir()
    parent = run_cli(["mlp", "--workers", "2", "--trials", "4", "--storage", f"sqlite:///{db}",
                      *TINY], **in_workers(tmp_path / "site", "torch.torch_version",
                                           SLOW_TORCH_IMPORT, MARKS=str(marks)))
    try:
        wait_until(lambda: len(list(marks.iterdir())) == 2, seconds=240,
                   what="2 workers inside torch's import")
        sent = time.monotonic()
        os.killpg(parent.pid, signal.SIGINT)  # a terminal's Ctrl-C: the parent and each worker
        out, err = parent.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.communicate()
    print(f"exit {parent.returncode} {took:.1f} s after a Ctrl-C inside the workers' torch import")
    assert parent.returncode == 130, err
    assert took < 10, took   # was: 60 s, the rest of the import
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not any(Path(f"/proc/{m.name}").exists() for m in marks.iterdir())
    assert query(db, "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", 0) == 0
