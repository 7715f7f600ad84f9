"""The first code a `--workers` process runs (search/launch.py starts it with `start`): the
standard library only, so that Ctrl-C and SIGTERM are handled before torch and optuna load
(seconds), and so that the process leaves at once when its launcher dies.

The launcher starts each process with SIGINT and SIGTERM blocked (a child inherits the mask):
a signal sent while the interpreter starts (a terminal's Ctrl-C reaches the whole group) waits
until `start` has its handler on, then stops the process quietly with exit 130. It is handled
even where the shell started the search with SIGINT ignored (nohup, `cmd &`): the launcher
forwards every stop to its workers, and a worker obeys it. While the process only imports
(torch, optuna: seconds, nothing claimed or written) a stop ends it at once: a
KeyboardInterrupt would wait while torch's own code runs (search/interrupts.py), up to the
rest of torch's import (3-5 s at load 7, measured; more on a busier machine). From the run
loop on, the handler (search/interrupts.py) notes every signal and raises at most once, inside
the `try`: the second of the two SIGINTs a worker gets at a Ctrl-C (the terminal's, the
launcher's) never lands outside it as a traceback.

What a worker says (its lines, its result) goes to the launcher through a pipe of its own
(`Outbox`), not a multiprocessing.Queue: a Queue's three named semaphores (/dev/shm) outlive a
launcher killed outright, and its resource tracker then says "There appear to be 3 leaked
semaphore objects". A pipe ends with its processes.

A process leaves with os._exit once it has said what it did: the interpreter's own shutdown
would spend 8-12 s (measured on 2 loaded cores) collecting torch's and optuna's objects, and
after its launcher's death nobody waits for that.
"""
from __future__ import annotations

import collections
import ctypes
import os
import pickle
import signal
import sys
import threading
import traceback

from search import interrupts

INTERRUPTED = 130            # stopped by a signal: the launcher counts it as stopped, no error
FAILED = 1
STOP_SIGNALS = set(interrupts.STOP_SIGNALS)
PARENT_CHECK_SECONDS = 1.0   # where prctl is missing: how often a watchdog looks at the parent
FLUSH_SECONDS = 5.0          # how long the last lines and the result may take to reach a parent


def start(payload: bytes, index: int, gpu: str | None, parent: int, pipe) -> None:
    """One worker: handlers first, then the heavy imports and the run loop; never returns.

    `payload` is the pickled RunSettings: unpickling it imports the settings' modules, which
    must happen under the handler, not while multiprocessing reads this call's arguments.
    `pipe`: the writing end of this worker's pipe to the launcher."""
    messages = Outbox(pipe)   # its thread is made with the stop signals blocked: they stay so
    for signum in STOP_SIGNALS:   # while it imports: nothing is held, it leaves at once
        signal.signal(signum, _leave_at_once)
    sys.unraisablehook = interrupts.unheard_lost_interrupts(sys.unraisablehook)
    stop = interrupts.Interrupts()
    code = FAILED
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one pending: leaves here
        die_with_parent(parent)
        if gpu is not None:  # before anything touches CUDA in this fresh (spawned) process
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        from search.launch import worker_main
        settings = pickle.loads(payload)
        stop.install()   # for good: a signal after the `try` below is noted, never raised
        with stop.raising():   # a stop noted meanwhile raises here
            code = worker_main(settings, index, messages)
    except KeyboardInterrupt:  # outside the run loop's own handling: nothing is held
        code = INTERRUPTED
    except BaseException:  # unexpected: the details on stderr, the launcher says the rest
        traceback.print_exc()
    leave(code, messages, parent)


def _leave_at_once(signum, _frame) -> None:
    """A stop while the process imports: exit now, 130 (it has said nothing, holds nothing)."""
    interrupts.note_stop(signum)
    os._exit(INTERRUPTED)


def leave(code: int, messages: "Outbox", parent: int) -> None:
    """Hand over what is still buffered (while the parent lives to read it), then exit now."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        messages.close(FLUSH_SECONDS if os.getppid() == parent else 0)
    finally:
        os._exit(code)


class Outbox:
    """A worker's messages to its launcher, ("line" | "result" | "error", index, payload),
    through a pipe only this process writes. `put` never waits: a thread of its own writes,
    so a launcher that reads slowly never holds up training, and a signal (taken by the main
    thread) never stops a write half-way, which would leave the launcher a torn message."""

    def __init__(self, pipe):
        self._pipe, self._queued, self._closed = pipe, collections.deque(), False
        self._changed = threading.Condition()
        self._writer = threading.Thread(target=self._write, name="outbox", daemon=True)
        self._writer.start()

    def put(self, message: tuple) -> None:
        with self._changed:
            self._queued.append(message)
            self._changed.notify()

    def close(self, seconds: float) -> None:
        """Write what is queued, for up to `seconds`; then the pipe is the launcher's to end."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._writer.join(seconds)

    def _write(self) -> None:
        while True:
            with self._changed:
                while not (self._queued or self._closed):
                    self._changed.wait()
                if not self._queued:
                    return
                message = self._queued.popleft()
            try:
                self._pipe.send(message)
            except OSError:   # the launcher has gone: nobody reads any more
                return


def die_with_parent(parent: int) -> None:
    """SIGTERM to this process when its parent dies (the loop then fails its trial, queues it
    again and leaves; before the loop it leaves at once)."""
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the watchdog below does it, within 1 s
        pass

    def watch():
        while os.getppid() == parent:
            threading.Event().wait(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:  # died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
