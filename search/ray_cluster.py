"""Trials on a Ray cluster (`--ray`, the optional extra `optuna-search[ray]`).

    optuna-search resnet18 --ray local --workers 4 --gpus-per-trial 0.25   # a cluster for this run
    optuna-search resnet18 --ray auto --workers 16 --storage postgresql://...   # `ray start` one

Ray only places runners: one long-lived actor per slot (`--workers N` of them) runs the run
loop (search/run.py) in its process, loading the data once, until the study's target is met.
Optuna stays the source of truth: the storage holds the target, the queue and every result;
its samplers and pruners and optuna-dashboard work as without Ray (no Ray Tune).
- An actor (or its node) that dies is restarted by Ray and runs the loop again; its trial is
  failed and queued again through the heartbeat, like any worker that dies.
- Ctrl-C / SIGTERM to this process on a cluster it joined (`auto`, HOST:PORT): every actor
  gets SIGTERM on its own node, fails its running trial, queues it again and returns; then
  the actors are ended. Nothing is left RUNNING.
- With `--ray local` the cluster is this process's (search/ray_local.py): at Ctrl-C or SIGTERM
  (to this process or its whole group, Ray's processes included) it is killed at once and its
  running trials are failed and queued again here; when this process is killed, a watchdog
  kills what the kernel does not. No Ray process is left behind, within seconds.
- Several machines need a storage they all reach (PostgreSQL) and, for checkpoints and
  pictures, a shared artifact folder (OPTUNA_SEARCH_ARTIFACTS).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Iterator

from search import ray_local
from search.errors import UsageError
from search.interrupts import note_stop, stop_requested
from search.run import RunResult, run_process
from search.settings import RunSettings
from search.terminal import say
from storage import first_line, storage_kind

RAY_MISSING = "--ray needs Ray: pip install 'optuna-search[ray]'"
CONNECT_SECONDS = 5         # an address that does not answer is bad input within this
STOP_SECONDS = 60           # after SIGTERM, how long actors get to fail their trial and return
ACTOR_RESTARTS = 3          # per slot: an actor (or node) that dies comes back this often
POLL_SECONDS = 0.2
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def connected(settings: RunSettings, err=None) -> Iterator[None]:
    """Connect to (or, for `local`, start) the Ray cluster before anything is written;
    every problem is a UsageError (exit 2). Disconnects (and stops a local cluster) after."""
    err = err or sys.stderr
    if importlib.util.find_spec("ray") is None:
        raise UsageError(RAY_MISSING)
    address = settings.ray
    local_file = storage_kind(settings.storage) in ("sqlite", "journal")
    if address not in ("local", "auto"):
        host, port = _host_port(address)
        if local_file and host not in LOOPBACK:
            raise UsageError(f"{settings.storage} is a file on this machine; Ray at {address} "
                             "runs trials on other machines: use --storage postgresql://...")
        try:  # a quick TCP check: a clear line in seconds instead of Ray's long retries
            socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
        except OSError as error:
            raise UsageError(f"no Ray cluster at {address} ({error.strerror or error}); "
                             "start one with `ray start --head`, or use --ray local") from None
    import ray
    ours = address == "local" and ray_local.can_watch()
    try:
        try:
            with ray_local.starting(ours):   # a stop meanwhile kills it and leaves, exit 130
                ray.init(address=address, include_dashboard=False,
                         logging_level=logging.ERROR, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UsageError(f"could not connect to Ray at {address}: "
                             f"{first_line(error)}") from None
        _one_line_per_raylet_message()
        if address == "local":
            ray_local.start_watchdog()
        _check_cluster(settings, local_file, err)
        with ray_local.ray_errors_to_log():
            yield
    except KeyboardInterrupt:   # a stop before the actors ran (or after): ours is killed at
        if ours and not ray_local.cluster_killed:   # once, not shut down (Ray's processes
            ray_local.kill_cluster({})              # may have the group's signal too)
        raise
    finally:
        if ray.is_initialized() and not ray_local.cluster_killed:   # killed: nothing to
            ray.shutdown()  # disconnect from; else, with --ray local, this stops the cluster
        ray_local.stop_watchdog()


def _one_line_per_raylet_message() -> None:
    """Ray prints what the raylet reports to this driver on its stdout: for each killed actor
    ~10 lines of ids and possible causes. One line each instead, of ours. Ray has no setting
    for it: this replaces the printer its error listener looks up (ray._private.worker), and
    does nothing where that has moved."""
    import ray._private.worker as ray_worker
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "one_line", False):
        return

    def one_line(data, ignore_prefix):
        if data.get("pid") != "raylet":
            return printer(data, ignore_prefix)
        for message in data.get("lines", []):
            say(sys.stdout, f"ray: {first_sentence(message)}")

    one_line.one_line = True
    ray_worker.print_to_stdstream = one_line


def first_sentence(message: str) -> str:
    """`message`'s first line, up to its first full stop (or 200 characters)."""
    line = (message.strip().splitlines() or [""])[0].strip()
    end = line.find(". ")
    return (line[:end + 1] if 0 <= end < 200 else line[:200])


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray {address!r}: use local, auto or HOST:PORT")
    return host, int(port)


def _check_cluster(settings: RunSettings, local_file: bool, err) -> None:
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if local_file and len(nodes) > 1:
        raise UsageError(f"the Ray cluster has {len(nodes)} machines, but {settings.storage} is "
                         "a file on this one: use --storage postgresql://...")
    if len(nodes) > 1 and not os.environ.get("OPTUNA_SEARCH_ARTIFACTS"):
        print("warning: OPTUNA_SEARCH_ARTIFACTS is not set: each machine keeps its checkpoints "
              "and pictures in ./optuna-search-artifacts, so a retry on another machine starts "
              "from epoch 0 and reports miss pictures; point it at a shared folder", file=err)
    gpus = gpus_per_actor(settings)
    most = max((n.get("Resources", {}).get("GPU", 0) for n in nodes), default=0)
    if gpus > most:
        raise UsageError(f"--gpus-per-trial {gpus:g}: no machine of the Ray cluster has that "
                         f"many GPUs (at most {most:g})")


def gpus_per_actor(settings: RunSettings) -> float:
    """--gpus-per-trial, else a whole GPU where the cluster has one, else none."""
    if settings.gpus_per_trial is not None:
        return settings.gpus_per_trial
    import ray
    return 1.0 if settings.device != "cpu" and ray.cluster_resources().get("GPU", 0) else 0.0


def trials_per_gpu(gpus: float) -> int:
    """How many actors Ray places on one GPU at `gpus` GPUs each: as many as fit
    (0.25: 4, 0.3: 3, 0.4: 2), 1 for a whole GPU or more (or none)."""
    if not 0 < gpus < 1:
        return 1
    return max(1, int(1 / gpus + 1e-9))


class Runner:
    """One slot: the run loop in this actor's process (made a Ray actor in run_on_ray)."""

    def __init__(self, settings: RunSettings, index: int):
        self.settings, self.index = settings, index

    def run(self, lines) -> RunResult:
        import ray
        from search.progress import LineSender, quiet_optuna
        quiet_optuna()
        # Where this process is (again, after a restart): the driver signals it to stop.
        lines.put(("where", self.index, (ray.get_runtime_context().get_node_id(), os.getpid())))
        return run_process(self.settings, LineSender(lines.put, self.index))


def _signal(pid: int, signum: int) -> None:
    """Runs on the actor's node (a Ray task pinned there): signal the actor's process."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def run_on_ray(settings: RunSettings, out, outcome, opened) -> None:
    """settings.workers actors running the loop; returns when all have returned."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    lines = Queue()
    gpus = gpus_per_actor(settings)
    actor = ray.remote(num_cpus=1, num_gpus=gpus,
                       max_restarts=ACTOR_RESTARTS, max_task_retries=-1)(Runner)
    # Each actor is one worker (Ray shares out the cores); its timings, and its share of the
    # GPU's memory (search/train/gpu_share.py), are those of the trials Ray places on one GPU.
    slot = settings.replace(workers=1, device_shared_by=trials_per_gpu(gpus))
    actors, running = [], {}
    signal_on = ray.remote(num_cpus=0)(_signal)
    stopping = threading.Event()
    ours = settings.ray == "local" and ray_local.can_watch()

    def stop(signum, _frame):
        first = note_stop(signum)
        outcome.interrupted = True
        stopping.set()
        if ours and first:   # leave Ray at once (a second signal must not interrupt the
            raise KeyboardInterrupt   # cleanup of the first); Ray raises its own from a wait

    handlers = {}
    where: dict[int, tuple[str, int]] = {}  # slot -> (node id, pid) of its actor's process
    signalled: set[tuple[str, int]] = set()  # the processes told to stop
    noted: dict[int, str] = {}  # --ray local: each actor process ever reported, pid -> start time
    try:
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        actors += [actor.remote(slot, i) for i in range(settings.workers)]
        running.update({actors[i].run.remote(lines): i for i in range(len(actors))})
        asked_at = None
        while running:
            if stop_requested():  # also where a handler's KeyboardInterrupt was lost (raised
                outcome.interrupted = True   # in a finalizer): the stop is a state
                stopping.set()
                if ours:
                    raise KeyboardInterrupt
            done, _ = ray.wait(list(running), timeout=POLL_SECONDS)
            for ref in done:
                index = running.pop(ref)
                try:
                    outcome.add(ray.get(ref))
                except ray.exceptions.RayError as error:
                    outcome.errors.append(f"Ray worker {index}: {first_line(error)}")
            _relay(lines, out, where)
            if ours:
                for _, pid in where.values():
                    if pid not in noted and (started := ray_local.start_time(pid)):
                        noted[pid] = started
            if stopping.is_set():
                asked_at = asked_at or time.monotonic()
                # Each actor's process, on its own node, once; checked at every poll, so an
                # actor that reports only now (still starting, or restarted by Ray) is told too.
                for index in running.values():
                    if index in where and where[index] not in signalled:
                        node, pid = where[index]
                        signal_on.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                            node, soft=False)).remote(pid, signal.SIGTERM)
                        signalled.add(where[index])
            if asked_at is not None and time.monotonic() - asked_at > STOP_SECONDS:
                outcome.errors.append("Ray workers did not stop within "
                                      f"{STOP_SECONDS} s; ended them")
                break
        _relay(lines, out, where)
    except KeyboardInterrupt:
        if not (ours and stop_requested()):
            raise
        outcome.interrupted = True
        # The cluster is ours, and Ray's processes may have the signal too (search/ray_local.py):
        # kill it all (the raylet with the actors: none is restarted), then fail and queue
        # their trials, once nothing can still write to one or claim another.
        killed = ray_local.kill_cluster(noted)
        ray_local.fail_and_requeue(opened, set(killed))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if not ray_local.cluster_killed:
            for each in actors:
                ray.kill(each, no_restart=True)


def _relay(lines, out, where: dict) -> None:
    for kind, index, payload in lines.get_nowait_batch(lines.qsize()):
        if kind == "where":
            where[index] = payload
        else:
            say(out, f"[r{index}] {payload}")   # wrapped here, to this terminal's width
