"""search.interrupts: an interrupt inside a trial waits for a storage call to return (raising
inside SQLAlchemy could leave SQLite's write lock held), and is raised once it has; a handler
raises once per stop; a KeyboardInterrupt lost in a finalizer still stops a worker, because
the stop is a state its training loop reads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (REPO, TINY, in_workers, integrity, run_cli, states, wait_for_running,
                     wait_until)
from search.interrupts import Interrupts, _unsafe_to_raise, forget_stops, stop_requested


def frame_inside(module_name: str):
    """A frame whose code belongs to `module_name` (as if interrupted there)."""
    namespace = {"__name__": module_name, "sys": sys}
    exec("def here():\n    return sys._getframe()", namespace)
    return namespace["here"]()


def test_storage_and_torch_frames_are_recognised():
    assert _unsafe_to_raise(frame_inside("sqlalchemy.engine.base"))
    assert _unsafe_to_raise(frame_inside("optuna.storages._rdb.storage"))
    assert _unsafe_to_raise(frame_inside("torch.distributed"))   # its import calls C++
    ran = {}
    exec("import sys\nframe = sys._getframe()", ran)   # as dataclasses make methods
    assert _unsafe_to_raise(ran["frame"])
    assert not _unsafe_to_raise(frame_inside("search.train.trainer"))


def test_an_interrupt_in_a_storage_call_is_raised_when_the_call_has_returned():
    interrupts = Interrupts()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt), interrupts.raising():
        interrupts._handle(signal.SIGINT, frame_inside("sqlalchemy.orm.session"))  # deferred
        assert interrupts.requested
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the trainer's own code: raised here, soon
            sum(range(1000))
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_raise_still_waiting_when_its_region_ends_is_dropped():
    """A stop noted in a storage call waits (SIGALRM, 20 ms); the region left meanwhile, the
    wait is moot (the loops read the state): no alarm is left to fire in a finishing process
    (once Python has put SIGALRM's default back, it killed a search: exit -14)."""
    interrupts = Interrupts()
    with interrupts.installed():
        with interrupts.raising():
            interrupts._handle(signal.SIGINT, frame_inside("sqlalchemy.orm.session"))
            assert signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0)   # waiting
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert interrupts.requested


def test_an_interrupt_while_training_is_raised_at_once():
    interrupts = Interrupts()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt), interrupts.raising():
        interrupts._handle(signal.SIGTERM, frame_inside("search.train.trainer"))


def test_outside_a_raising_region_an_interrupt_is_only_noted_and_a_second_is_ignored():
    interrupts = Interrupts()
    with interrupts.installed():
        interrupts._handle(signal.SIGINT, frame_inside("search.run"))
        interrupts._handle(signal.SIGTERM, frame_inside("search.run"))
        assert interrupts.requested
        started = time.monotonic()
        interrupts.sleep(30)  # returns at once: an interrupt is pending
        assert time.monotonic() - started < 1
        with pytest.raises(KeyboardInterrupt):  # a region entered afterwards raises at once
            with interrupts.raising():
                pass


def test_a_stop_raises_once_and_stays_a_state_of_the_process():
    """The first signal raises; a second (a Ctrl-C reaches a worker twice) is only noted,
    even inside a raising region, so it never lands in the cleanup of the first; every
    Interrupts of the process, and every loop, reads the stop until a new command."""
    first, later = Interrupts(), Interrupts()
    with first.installed():
        with pytest.raises(KeyboardInterrupt), first.raising():
            signal.raise_signal(signal.SIGINT)   # the handler runs before this returns
        first._raising = True   # as if still inside: the second one must not raise
        signal.raise_signal(signal.SIGTERM)
        first._raising = False
    assert stop_requested() and later.requested
    forget_stops()   # what search.cli.main does as a command starts
    assert not later.requested


# ------------------------------------------------------------------ a Ctrl-C lost in a worker

# In one `--workers` process of the search, at the first epoch to start once the file $LOSE_GO
# exists: code that sends SIGINT to the whole group (a terminal's Ctrl-C: the launcher and
# both workers) and runs on until the worker's handler has run there, run where Python cannot
# raise: an object's __del__ ($LOSE_IN=finalizer) or a weakref's callback (callback), as
# the object is dropped. Python can only print "Exception ignored" for the KeyboardInterrupt
# raised there, and goes on; the launcher's forwarded SIGINT follows. This worker has lost
# its interrupt, for certain.
LOSE_CTRL_C_IN_A_FINALIZER = """
    import os, signal, weakref
    train_epoch = module._train_epoch

    def ctrl_c(*_):
        print("finalizer sends SIGINT", flush=True)   # stdout: stderr must hold one line
        os.killpg(0, signal.SIGINT)
        for _ in range(100_000):   # the handler runs here, at a backward jump
            pass

    class Finalizer:
        def __del__(self):
            ctrl_c()

    class Watched:
        pass

    def drop_one():
        if os.environ["LOSE_IN"] == "finalizer":
            Finalizer()   # __del__ runs here
        else:
            watched = Watched()
            ref = weakref.ref(watched, ctrl_c)
            del watched   # the callback runs here

    def losing(run, batches, first_step, order, epoch):
        go = os.environ["LOSE_GO"]
        if os.path.exists(go):
            try:   # one worker of the search, once
                os.close(os.open(go + ".fired", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                drop_one()
                print("trains on after the finalizer", flush=True)   # its interrupt is lost
        return train_epoch(run, batches, first_step, order, epoch)

    module._train_epoch = losing
"""


@pytest.mark.parametrize("lose_in", ["finalizer", "callback"])
def test_a_ctrl_c_a_worker_loses_in_a_finalizer_still_stops_it_within_seconds(tmp_path, lose_in):
    """The CI hang: a worker's KeyboardInterrupt raised inside a finalizer (or a weakref
    callback) is lost; the stop is a state its training loop reads, so it stops all the same,
    and the parent with it."""
    db, go = tmp_path / "lost.db", tmp_path / "go"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "6", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY],
                     **in_workers(tmp_path / "site", "search.train.trainer",
                                  LOSE_CTRL_C_IN_A_FINALIZER, LOSE_GO=str(go), LOSE_IN=lose_in))
    try:
        wait_for_running(db, 2, seconds=240)
        go.touch()
        wait_until(lambda: Path(f"{go}.fired").exists(), what="a worker's finalizer to fire")
        fired = time.monotonic()
        out, err = parent.communicate(timeout=60)
        took = time.monotonic() - fired
    finally:
        if parent.poll() is None:   # main's code: the worker trains on, the parent waits
            os.killpg(parent.pid, signal.SIGKILL)
            parent.communicate()
    print(f"exit {parent.returncode} {took:.1f} s after the lost Ctrl-C")
    assert "finalizer sends SIGINT\ntrains on after the finalizer\n" in out  # lost, for certain
    assert parent.returncode == 130, err[-2000:]
    assert took < 10, took
    lines = err.strip().splitlines()   # no "Exception ignored", no traceback: our one line
    assert len(lines) == 1 and lines[0].startswith("interrupted; unfinished trials"), err
    assert sorted(states(db)) == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert integrity(db) == "ok"


# ------------------------------------------------------------------ a stop after the command

# Code that runs as the interpreter shuts down, after Python has put back the default action
# of every signal it handled: an atexit callback leaves a reference cycle, which the last
# collection finds then; its finalizer sends SIGINT and SIGTERM to the process.
STOP_AS_THE_INTERPRETER_EXITS = """
import atexit, gc, os, signal
class AtTheVeryEnd:
    def __del__(self):
        os.write(1, b"stopped while exiting\\n")   # sys.stdout may be gone by now
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
def leave_a_cycle():
    gc.disable()   # not collected before the end
    end = AtTheVeryEnd()
    end.cycle = end
atexit.register(leave_a_cycle)
"""


def test_a_stop_once_the_command_is_over_changes_nothing(tmp_path):
    """A search that has finished (exit 0) is not killed by a Ctrl-C or SIGTERM that lands
    while its interpreter shuts down (was: killed, exit -2 or -15; 1 of the first 65 soak
    tries)."""
    db = tmp_path / "done.db"
    search = run_cli(["mlp", "--trials", "1", "--epochs", "1", "--storage", f"sqlite:///{db}",
                      *TINY], STOP_AS_THE_INTERPRETER_EXITS)
    out, err = search.communicate(timeout=300)
    assert out.endswith("stopped while exiting\n")   # the signals came at the very end
    assert search.returncode == 0 and err == "", (search.returncode, err[-2000:])
    assert states(db) == ["COMPLETE"]


# ------------------------------------------------------------------ a stop inside exec()'d code

# The launcher's first import after its handler is on runs a string with exec(), as dataclasses
# do to make their methods, and a SIGINT lands in it.
CTRL_C_IN_EXEC = """
import signal, sys
class CtrlCInExec:
    def find_spec(self, name, path=None, target=None):
        if name == "search.cli.arguments" and callable(signal.getsignal(signal.SIGINT)):
            sys.meta_path.remove(self)
            exec("import signal\\nsignal.raise_signal(signal.SIGINT)\\n")
        return None
if "--multiprocessing-fork" not in sys.argv:
    sys.meta_path.insert(0, CtrlCInExec())
"""


def test_a_ctrl_c_inside_code_run_by_exec_still_exits_130_under_python_m(tmp_path):
    """CPython 3.11 marks an interpreter whose exec()'d code let a KeyboardInterrupt out, and
    `python -m` then ends by SIGINT whatever the program returns (was: exit -2 after our
    line, 4 of 120 soak tries): the interrupt waits until that code has run."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CTRL_C_IN_EXEC)
    search = subprocess.run(
        [sys.executable, "-m", "search.cli", "mlp", "--storage",
         f"sqlite:///{tmp_path / 'exec.db'}", *TINY], capture_output=True, text=True,
        timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])})
    assert search.returncode == 130, (search.returncode, search.stderr[-2000:])
    assert search.stderr == "optuna-search: interrupted; nothing was left running\n"
