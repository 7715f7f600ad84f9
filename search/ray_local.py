"""The processes of a `--ray local` cluster: this process started them (ray.init), so it ends
them, at once, however it is stopped.

- Stopped by a signal (Ctrl-C; SIGTERM, to this process alone or to its whole group, as Slurm's
  scancel does): Ray's own processes in the group get the signal too and stop on their own
  terms, the raylet killing the actors before they can record anything. So the cluster is
  killed here at once (`kill_cluster`: raylet, GCS, agents, actors), and once the actors are
  gone their RUNNING trials are failed and queued again through the storage
  (`fail_and_requeue`, the steps every process uses, storage/retries.py). Ray is not called
  after that: its GCS is gone, and every call would wait out Ray's 60 s reconnect.
- Killed (SIGKILL, a crash): the kernel kills the GCS and the raylet with it (Ray sets their
  parent-death signal), but the raylet's dashboard and runtime-env agents stay ~61 s (they try
  to tell the dead GCS first) and its workers a while. A watchdog (`python -m
  search.ray_local PID`, in its own session, so that a signal to this group leaves it) notes
  this process's descendants every WATCH_SECONDS and kills those left once it has died.
Linux only (/proc): elsewhere the watchdog is not started and a stop leaves Ray's teardown to
Ray.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from search.interrupts import check_stop, note_stop

WATCH_SECONDS = 0.5     # how often the watchdog notes the descendants (agents start in ~2 s)
GONE_SECONDS = 5.0      # how long killed processes get to be gone (SIGKILL: milliseconds)
PROC = Path("/proc")
STOPS = (signal.SIGINT, signal.SIGTERM)
ALL_CLEAR = 0   # no signal has number 0: the byte that says ray.init is over


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command: state, ppid, ... ([19]: the start time)."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time (to tell a reused pid) of every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is None:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            started[int(entry.name)] = fields[19]
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = started[child]
        todo.extend(children.get(child, []))
    return found


def kill(processes: dict[int, str], seconds: float = GONE_SECONDS) -> None:
    """SIGKILL each process that is still the one noted; return once all are gone."""
    def same(pid: int, start: str) -> bool:
        fields = _stat(pid)   # a zombie is gone, not reaped yet
        return fields is not None and fields[19] == start and fields[0] != "Z"

    for pid, start in processes.items():
        if same(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + seconds
    while any(same(p, s) for p, s in processes.items()) and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def ray_errors_to_log() -> Iterator[None]:
    """While Ray runs in this process, what its C++ core writes to stderr (file descriptor 2:
    a line per failed task, per lost connection, once its raylet is gone) goes to a file in
    its session's logs (python-core-driver-*.log has it too), and this program's own lines
    (sys.stderr) to the terminal. Left so after a killed cluster: it logs till the exit."""
    import ray
    try:
        logs = Path(ray._private.worker._global_node.get_logs_dir_path())
        target = os.open(logs / "driver-stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except (AttributeError, OSError):   # Ray moved it: its lines stay on the terminal
        yield
        return
    sys.stderr.flush()
    ours, before = os.dup(2), sys.stderr
    sys.stderr = open(ours, "w", buffering=1, encoding=before.encoding, errors="backslashreplace",
                      closefd=False)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        if not cluster_killed:
            sys.stderr.flush()
            os.dup2(ours, 2)
            sys.stderr = before
            os.close(ours)


@contextlib.contextmanager
def starting(ours: bool) -> Iterator[None]:
    """Around ray.init. Ray's own SIGTERM handler (sys.exit(15), no line, the processes it
    started left behind) is kept out: ours stays. With `ours` (a local cluster this process
    starts: seconds), a stop meanwhile kills what has started and leaves at once, exit 130:
    nothing is written yet (the cluster comes before the study), and Ray, half started and
    its processes signalled too, could only wait out its timeouts (30 s, measured) or crash.
    The leaving is done by a thread of its own, woken through the signal's wakeup file
    descriptor (written by the C-level handler, in whatever thread takes the signal): a Python
    handler runs only when the main thread next runs Python, and ray.init may wait in Ray's C++
    core for 30 s on a GCS the signal has ended (29.7 s to the exit, measured)."""
    import ray._private.ray_constants as ray_constants
    import ray._private.utils as ray_utils
    setter = getattr(ray_utils, "set_sigterm_handler", None)
    if setter is not None:
        ray_utils.set_sigterm_handler = lambda handler: None
    # Nor its core's C++ handler in this process, which writes 3-6 lines ("*** SIGTERM
    # received at time=...", addresses) to the terminal at a stop as ray.init ends.
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    previous, leaver = {}, None
    if ours:
        wakeup, waker = os.pipe()
        os.set_blocking(waker, False)

        def noted(signum, _frame):   # the Python side: ray.init is left undisturbed
            note_stop(signum)
            with contextlib.suppress(OSError):
                os.write(waker, bytes([signum]))   # should Ray have moved the wakeup fd

        previous = {s: signal.signal(s, noted) for s in STOPS}
        previous_fd = signal.set_wakeup_fd(waker, warn_on_full_buffer=False)
        leaver = threading.Thread(target=_leave_when_woken, args=(wakeup,),
                                  name="stop-while-ray-starts", daemon=True)
        leaver.start()
    try:
        check_stop()   # one noted before (its KeyboardInterrupt lost): no cluster is started
        yield
    finally:
        if leaver is not None:
            signal.set_wakeup_fd(previous_fd)
            with contextlib.suppress(OSError):
                os.write(waker, bytes([ALL_CLEAR]))   # after any stop's byte: a pipe keeps order
            # Until the thread has read it: a stop before it is the thread's to finish (it
            # exits meanwhile); going on, this process would point its stderr at Ray's log
            # (ray_errors_to_log) and the thread's line would go there (2 of 100 soak tries).
            leaver.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if leaver is not None:
            os.close(waker)
        if setter is not None:
            ray_utils.set_sigterm_handler = setter
    check_stop()   # one noted once the thread was done: the usual way out (connected's)


def _leave_when_woken(wakeup: int) -> None:
    """Wait for a stop signal's byte; then kill every process this one started and exit 130.
    (Every signal with a Python handler writes its number: SIGALRM, say, is not a stop.)
    ALL_CLEAR: ray.init is over, the usual handling takes over."""
    while (woken := os.read(wakeup, 1)[0]) not in (*STOPS, ALL_CLEAR):
        pass
    if woken == ALL_CLEAR:
        os.close(wakeup)   # (leaving, it keeps it open: ALL_CLEAR may still be written)
        return
    note_stop(woken)
    for _ in range(3):   # the raylet may start an agent while its elders are being killed
        started = descendants(os.getpid())
        if not started:
            break
        kill(started)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os.write(2, b"optuna-search: interrupted; nothing was left running\n")
    os._exit(130)


def can_watch() -> bool:
    return PROC.is_dir() and sys.platform.startswith("linux")


def kill_cluster(actors: dict[int, str]) -> dict[int, str]:
    """Kill every process this one started (the local cluster: raylet, GCS, agents, actors)
    but the watchdog, and keep Ray from calling the dead cluster at exit. `actors`: every actor
    process noted while they ran (pid -> start time); one the group's signal has already ended
    (or left, its raylet gone) is no longer below this process, yet its trial is to be failed."""
    import ray
    atexit.unregister(ray.shutdown)   # it would wait for the dead GCS
    processes = {**actors, **descendants(os.getpid())}
    if _watchdog is not None:
        processes.pop(_watchdog.pid, None)
    kill(processes)
    global cluster_killed
    cluster_killed = True
    return processes


cluster_killed = False
_watchdog: subprocess.Popen | None = None


def exit_if_killed(code: int) -> None:
    """After a killed cluster, leave now with `code`: Ray's core worker in this process,
    torn down at the interpreter's exit, crashes (SIGSEGV, measured) on its dead raylet."""
    if cluster_killed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start_watchdog() -> None:
    """The watchdog of this process's descendants (see above); its stdin is a pipe from here,
    at EOF this process has died (or exited)."""
    global _watchdog, cluster_killed
    cluster_killed = False
    if can_watch():
        _watchdog = subprocess.Popen([sys.executable, "-m", "search.ray_local",
                                      str(os.getpid())], stdin=subprocess.PIPE,
                                     # not this process's output: a reader of it (a pipe)
                                     # sees its end when this process ends, not later
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, close_fds=True)


def stop_watchdog() -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.stdin.close()   # EOF: it kills what is left (nothing, after ray.shutdown)
        _watchdog = None


def fail_and_requeue(opened, pids: set[int]) -> int:
    """Fail the RUNNING trials that the (killed) processes `pids` of this machine were running,
    and queue each again, as an interrupted trial is; returns how many. Also those whose
    runner on this machine is gone (an actor the group's signal ended before it reported
    where it runs), and those that say no runner: a process claims a trial, beats and records
    itself as its runner in one step under the study's lock (search/run.py), held here too,
    so such a trial's claimer was killed mid-claim. Left RUNNING, each would wait out the
    heartbeat's grace."""
    from optuna.trial import TrialState   # here: the watchdog does without optuna
    from reports.trial_data import trial_value
    study, store = opened.study, opened.store
    host, count = socket.gethostname(), 0
    with store.lock(study.study_name):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run = trial_value(trial, "run")
            if run is None or (run.get("host") == host and (run.get("pid") in pids
                                                            or not _alive(run.get("pid")))):
                count += store.fail_and_retry(study, trial, None) is not None
    return count


def _alive(pid) -> bool:
    fields = _stat(pid) if isinstance(pid, int) else None
    return fields is not None and fields[0] != "Z"


def _watch(parent: int) -> None:
    """The watchdog's loop: note the parent's descendants until its pipe closes, then kill
    those left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a terminal's Ctrl-C is the parent's to handle
    noted: dict[int, str] = {}
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], WATCH_SECONDS)
        if readable and not os.read(sys.stdin.fileno(), 1024):
            break
        noted.update(descendants(parent))
        noted.pop(os.getpid(), None)
    for pid in list(noted):   # what they started meanwhile, re-parented or not
        noted.update(descendants(pid))
    kill(noted)


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
