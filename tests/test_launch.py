"""search.launch: --workers N and `optuna-search worker` place the one run loop in local
processes; the study alone decides what runs. A killed parent takes its children with it, and
random kills of workers over three launchers never run a grid point twice."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import time
from collections import Counter

import pytest
import torch
from optuna.trial import TrialState

from helpers import (FAST_HEARTBEAT, TINY, alive, children_of, cmdline, finished, integrity,
                     load, maps, query, run_cli, running_with_an_epoch, wait_until)
from reports.table import REPEAT_ATTR
from reports.trial_data import RUN, trial_config, trial_value
from search import child, launch
from search.cli import main

TRIAL_LINE = re.compile(r"^\[w(\d+)\] trial +(\d+) (COMPLETE|PRUNED|FAIL)", re.MULTILINE)


@pytest.mark.slow
def test_eight_workers_run_200_trials_on_sqlite_without_losing_or_repeating_one(tmp_path, capfd):
    db = tmp_path / "load.db"
    started = time.perf_counter()
    code = main(["mlp", "--workers", "8", "--trials", "200", "--epochs", "1",
                 "--storage", f"sqlite:///{db}", *TINY])
    seconds = time.perf_counter() - started
    out, err = capfd.readouterr()
    assert code == 0, err
    trials = load(db).get_trials()
    # A random sampler may propose a configuration trained already: that repeat is answered
    # from the trained one (repeat_of) and the target counts trained configurations only.
    trained = [t for t in trials if REPEAT_ATTR not in t.user_attrs]
    assert {t.state for t in trials} == {TrialState.COMPLETE} and len(trained) == 200
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(trial_value(t, "epochs_run") == 1 and "test_acc" in t.user_attrs for t in trained)
    # One line per finished trial, prefixed by its worker; every worker took part.
    lines = TRIAL_LINE.findall(out)
    assert sorted(int(number) for _, number, _ in lines) == list(range(len(trials)))
    assert {worker for worker, _, _ in lines} == {str(i) for i in range(8)}
    assert "locked" not in out + err and "Traceback" not in err
    assert integrity(db) == "ok"
    print(f"8 workers x 200 trials: {seconds:.1f} s")


def test_workers_run_each_grid_point_once_and_a_second_run_nothing(tmp_path, capfd):
    db = tmp_path / "grid.db"
    grid = ["--grid", "activation=relu,sigmoid,tanh", "--grid", "batch_size=64,128"]
    command = ["mlp", "--workers", "3", "--epochs", "1", "--storage", f"sqlite:///{db}",
               "--study", "grid", *TINY, *grid]
    assert main(command) == 0
    trials = load(db, "grid").get_trials()
    points = Counter((t.params["activation"], t.params["batch_size"]) for t in trials)
    assert len(points) == 6 and set(points.values()) == {1}
    assert all(t.state == TrialState.COMPLETE for t in trials)
    capfd.readouterr()
    assert main(command) == 0
    assert "every grid point is already done" in capfd.readouterr().out
    assert len(load(db, "grid").get_trials()) == 6


def test_a_grid_search_and_a_worker_side_by_side_run_each_point_once(tmp_path):
    db = tmp_path / "side.db"
    url = f"sqlite:///{db}"
    grid = run_cli(["mlp", "--grid", "activation=relu,sigmoid,tanh", "--epochs", "20",
                    "--storage", url, "--study", "side", *TINY])
    wait_until(lambda: query(db, "SELECT COUNT(*) FROM trials WHERE state = 'WAITING'", 0) > 0,
               what="the grid points queued")
    worker = run_cli(["worker", "side", "--storage", url])
    for process in (grid, worker):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    trials = load(db, "side").get_trials()
    assert sorted(t.params["activation"] for t in trials) == ["relu", "sigmoid", "tanh"]
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_worker_joins_a_study_with_the_settings_it_was_made_with(tmp_path, capsys):
    db = tmp_path / "join.db"
    url = f"sqlite:///{db}"
    assert main(["mlp", "--trials", "1", "--epochs", "1", "--storage", url, *TINY,
                 "--set", "activation=tanh"]) == 0
    capsys.readouterr()
    # No model, space, --set or data options given: the study's are used; --trials 3 makes
    # the study's target 3, so the worker runs the 2 that are missing.
    assert main(["worker", "mlp", "--storage", url, "--trials", "3"]) == 0
    out = capsys.readouterr().out
    trials = load(db).get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials[1:]:
        config = trial_config(trial)
        assert config["activation"] == "tanh" and config["hidden_sizes"] == [16]
        assert trial_value(trial, "epochs_run") == 1
    assert "100 train / 50 val / 100 test" in out
    assert len(re.findall(r"^trial +\d+ COMPLETE", out, re.MULTILINE)) == 2


def exit_before_the_loop(payload, index, gpu, parent, messages) -> None:
    """Stands in for a worker that dies before its loop could report (a failing import)."""
    os._exit(3)


def test_a_worker_that_exits_before_it_reports_is_an_error_not_a_silent_success(
        tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(child, "start", exit_before_the_loop)  # spawn finds it by name
    db = tmp_path / "quiet.db"
    code = main(["mlp", "--trials", "2", "--workers", "2", "--storage", f"sqlite:///{db}",
                 *TINY])
    err = capfd.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("optuna-search:")]
    assert lines == [f"optuna-search: error: worker {i} exited with status 3 before it "
                     "reported (its own output, above, says why)" for i in (0, 1)], err
    assert finished(db) == 0


def test_gpus_are_handed_out_round_robin(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.gpu_assignment(5) == ["0", "1", "0", "1", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5")  # only these are ours to use
    assert launch.gpu_assignment(4) == ["2", "3", "5", "2"]
    assert launch.gpu_assignment(2, device="cpu") == [None, None]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch.gpu_assignment(2) == [None, None]


def test_a_parent_killed_outright_takes_its_workers_with_it_and_the_command_completes(tmp_path):
    db = tmp_path / "orphans.db"
    command = ["mlp", "--workers", "2", "--trials", "4", "--epochs", "40", "--storage",
               f"sqlite:///{db}", *TINY, "--set", "batch_size=16"]
    parent = run_cli(command)
    wait_until(lambda: running_with_an_epoch(db) >= 2, what="both workers training")
    workers = children_of(parent.pid)
    assert len(workers) >= 2
    parent.kill()
    assert parent.wait(timeout=60) == -signal.SIGKILL
    killed_at = time.monotonic()
    wait_until(lambda: not any(alive(pid) for pid in workers), seconds=30,
               what="no child alive after its parent was killed")
    took = time.monotonic() - killed_at
    print(f"children gone {took:.1f} s after their parent's SIGKILL (while training)")
    assert took < 5
    trials = load(db).get_trials()
    assert TrialState.RUNNING not in {t.state for t in trials}  # failed and queued again
    again = run_cli(command)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    trials = load(db).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert integrity(db) == "ok"


def test_workers_still_importing_leave_within_5_s_of_their_parents_kill(tmp_path):
    db = tmp_path / "orphans.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "4", "--storage", f"sqlite:///{db}",
                      *TINY])
    workers = []

    def importing() -> bool:  # both started, neither has torch loaded yet
        workers[:] = [pid for pid in children_of(parent.pid) if "spawn_main" in cmdline(pid)]
        return len(workers) == 2 and not any("libtorch" in maps(pid) for pid in workers)

    wait_until(importing, what="2 workers importing")
    parent.kill()
    killed_at = time.monotonic()
    wait_until(lambda: not any(alive(pid) for pid in workers), seconds=30,
               what="no child alive after its parent was killed")
    took = time.monotonic() - killed_at
    print(f"children gone {took:.1f} s after their parent's SIGKILL (while importing)")
    assert took < 5
    assert parent.wait(timeout=60) == -signal.SIGKILL


# The launcher blocks SIGINT and SIGTERM while it starts its workers, but another of its
# threads (torch's make some) may take one meanwhile, and the main thread then runs the handler
# before the workers exist. Caused for certain: a thread made before the block sends SIGTERM
# to the process (so takes it itself) as the first worker is about to start.
SIGTERM_AS_THE_WORKERS_START = """
import os, signal, threading, multiprocessing.process
go, sent = threading.Event(), threading.Event()
def send():
    go.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    sent.set()
threading.Thread(target=send, daemon=True).start()   # made now: SIGTERM not blocked in it
start = multiprocessing.process.BaseProcess.start
def starting(self):
    if not go.is_set():
        go.set()
        sent.wait()
        sys.stdout.write("SIGTERM as the workers start\\n")
    return start(self)
multiprocessing.process.BaseProcess.start = starting
"""


def test_a_stop_taken_as_the_workers_start_reaches_every_worker(tmp_path):
    db = tmp_path / "starting.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "4", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY], SIGTERM_AS_THE_WORKERS_START)
    try:
        out, err = parent.communicate(timeout=120)   # was: the workers ran the whole study
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.communicate()
    assert "SIGTERM as the workers start" in out
    assert parent.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert finished(db) == 0   # no trial ran to its end
    assert query(db, "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", 0) == 0


def test_a_killed_launcher_leaves_no_semaphore_and_says_nothing_of_one(tmp_path):
    """multiprocessing's named semaphores (a Queue has three, in /dev/shm) outlive a launcher
    killed outright: its resource tracker then removes them and says "There appear to be 3
    leaked semaphore objects". The workers talk to their launcher through pipes instead."""
    db = tmp_path / "killed.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "4", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY])
    wait_until(lambda: running_with_an_epoch(db) >= 2, what="both workers training")
    workers = [pid for pid in children_of(parent.pid) if "spawn_main" in cmdline(pid)]
    shared = {line.split()[-1] for pid in workers for line in maps(pid).splitlines()
              if "/dev/shm/" in line}
    parent.kill()
    out, err = parent.communicate(timeout=120)  # its stderr's end: every process that shares
    # it has gone (the workers, multiprocessing's resource tracker)
    assert parent.returncode == -signal.SIGKILL
    assert not any(alive(pid) for pid in workers)
    assert "leaked" not in err and "resource_tracker" not in err, err
    assert "Traceback" not in err, err
    assert shared == set()   # no semaphore (nor other shared memory) made for the workers
    assert integrity(db) == "ok"


def running_pids(db) -> list[int]:
    """The pids of the processes running trials that have reported an epoch and may still be
    killed without using up their point's tries (the chaos test wants every point done)."""
    rows = []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as connection:
            rows = connection.execute(
                "SELECT t.trial_id, (SELECT value_json FROM trial_system_attributes r WHERE "
                f"r.trial_id = t.trial_id AND r.key = '{RUN}'), (SELECT value_json FROM "
                "trial_system_attributes s WHERE s.trial_id = t.trial_id AND s.key = "
                "'retry_history') FROM trials t WHERE t.state = 'RUNNING' AND EXISTS (SELECT 1 "
                "FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id)").fetchall()
    except sqlite3.OperationalError:
        return []
    # A point may be killed on its first and second try: its third (the last) must finish.
    return [json.loads(run)["pid"] for _, run, history in rows
            if run and len(json.loads(history or "[]")) < 2]


@pytest.mark.slow
def test_chaos_random_kills_over_three_launchers_never_run_a_grid_point_twice(tmp_path):
    db = tmp_path / "chaos.db"
    url = f"sqlite:///{db}"
    grid = ["--grid", "activation=relu,sigmoid,tanh", "--grid", "lr=0.1,0.01,0.001,0.0001"]
    # Trials of a few seconds (100 epochs of 16-image batches): long enough to be killed in.
    commands = [["mlp", *grid, "--epochs", "100", "--storage", url, "--study", "chaos", *TINY,
                 "--set", "batch_size=16", "--workers", "2"],
                ["worker", "chaos", "--storage", url, "--workers", "2"],
                ["worker", "chaos", "--storage", url]]
    launchers = [run_cli(commands[0], **FAST_HEARTBEAT)]
    wait_until(lambda: query(db, "SELECT COUNT(*) FROM trials", 0) >= 12, what="the grid queued")
    launchers += [run_cli(c, **FAST_HEARTBEAT) for c in commands[1:]]
    rng, kills, restarts = random.Random(0), 0, 0
    deadline = time.monotonic() + 600
    while kills < 10 and time.monotonic() < deadline and finished(db) < 12:
        victims = running_pids(db)
        if victims:
            victim = rng.choice(victims)
            try:
                os.kill(victim, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
            time.sleep(rng.uniform(0.2, 1.0))  # spread the kills over the run
        for index, process in enumerate(launchers):  # a scheduler restarts what died
            if process.poll() is not None and finished(db) < 12:
                launchers[index] = run_cli(commands[index], **FAST_HEARTBEAT)
                restarts += 1
        time.sleep(0.05)
    assert kills == 10
    wait_until(lambda: all(p.poll() is not None for p in launchers) or finished(db) >= 12,
               seconds=600, what="the grid to finish")
    for process in launchers:
        process.communicate(timeout=300)
    trials = load(db, "chaos").get_trials()
    complete = Counter((t.params["activation"], t.params["lr"]) for t in trials
                       if t.state == TrialState.COMPLETE)
    assert len(complete) == 12 and set(complete.values()) == {1}   # each point exactly once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert integrity(db) == "ok"
    failed = sum(t.state == TrialState.FAIL for t in trials)
    print(f"chaos: {kills} kills, {restarts} launcher restarts, {len(trials)} trials "
          f"({failed} FAIL, 12 COMPLETE)")
