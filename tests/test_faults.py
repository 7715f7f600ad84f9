"""Faults: a killed worker loses nothing, interrupts end trials cleanly, a bad trial never stops
the study, and bad input (workers, worker, storage files) is refused before anything is written.

Trials are short: the MLP with 16 hidden units on 100 synthetic images, a few epochs.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
import weakref

import pytest
import torch
from optuna.trial import TrialState

import search.objective
import search.train.trainer
from helpers import (TINY, children_of, cmdline, integrity, load, maps, query, run_cli, states,
                     wait_for_running, wait_until)
from reports.study_data import study_record
from reports.trial_data import trial_curves, trial_value
from search.cli import main

# ------------------------------------------------------------------ 3. a killed worker

# Kill this process outright (no cleanup at all) after the first step of epoch 2. The trial
# goes stale all the same: its first heartbeat is written when it is claimed (search/claim.py).
KILL_IN_EPOCH_2 = """
import os, signal
import search.train.trainer as trainer
train_epoch = trainer._train_epoch
def dying(run, batches, first_step, order, epoch):
    def killing():
        for step, batch in enumerate(batches):
            if epoch == 2 and step == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch
    return train_epoch(run, killing(), first_step, order, epoch)
trainer._train_epoch = dying
"""


def test_a_killed_worker_loses_nothing_the_retry_resumes_after_the_last_epoch(
        tmp_path, monkeypatch, capsys):
    db, heartbeat = tmp_path / "kill.db", {"OPTUNA_SEARCH_HEARTBEAT": "1",
                                            "OPTUNA_SEARCH_GRACE": "2"}
    url = f"sqlite:///{db}"
    worker = run_cli(["mlp", "--trials", "1", "--epochs", "3", "--storage", url, *TINY,
                      "--set", "batch_size=32", "--checkpoint-every", "0"],  # every epoch
                     KILL_IN_EPOCH_2, **heartbeat)
    assert worker.wait(timeout=120) == -signal.SIGKILL, worker.stderr.read()
    killed = load(db).get_trials()[0]
    assert killed.state == TrialState.RUNNING and list(killed.intermediate_values) == [1]
    uid = study_record(load(db))["uid"]  # checkpoints belong to one study
    checkpoint = tmp_path / "kill.db-artifacts" / "checkpoints" / f"{uid}-trial{killed._trial_id}.pt"
    assert checkpoint.exists()

    # Another worker, after the grace period: its first trial marks the stale one FAIL,
    # queues a retry, and runs that retry (popped from the queue) from the checkpoint.
    time.sleep(3)  # past the 2 s grace period
    for name, value in heartbeat.items():
        monkeypatch.setenv(name, value)
    trained = []
    train_epoch = search.train.trainer._train_epoch

    def recording(run, batches, first_step, order, epoch):
        trained.append(epoch)
        return train_epoch(run, batches, first_step, order, epoch)

    monkeypatch.setattr(search.train.trainer, "_train_epoch", recording)
    assert main(["worker", "mlp", "--storage", url, "--trials", "1"]) == 0
    failed, retry = load(db).get_trials()
    assert failed.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    assert trained == [2, 3]                                   # only the missing epochs
    assert list(retry.intermediate_values) == [1, 2, 3]        # no gap, no duplicate
    assert retry.intermediate_values[1] == killed.intermediate_values[1]
    assert len(trial_curves(retry)["val_acc"]) == 3 and trial_value(retry, "epochs_run") == 3
    assert not checkpoint.exists()                              # removed when the trial ended
    assert integrity(db) == "ok"


# ------------------------------------------------------------------ 4. interrupts, bad trials

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_running_trial_cleanly(tmp_path, signum):
    db = tmp_path / "signal.db"
    worker = run_cli(["mlp", "--trials", "3", "--epochs", "2000", "--storage",
                      f"sqlite:///{db}", *TINY])
    wait_for_running(db, 1)
    worker.send_signal(signum)
    assert worker.wait(timeout=60) == 130
    err = worker.stderr.read()
    assert "interrupted" in err and "Traceback" not in err
    assert states(db) == ["FAIL", "WAITING"]  # failed, and queued again for the same command
    assert integrity(db) == "ok"


def ignoring_sigint() -> None:
    """How nohup and a script's `cmd &` start a program: SIGINT ignored, inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def importing_workers(parent: int) -> list[int]:
    """The --workers children of `parent` that are still loading torch (not yet mapped)."""
    pids = [pid for pid in children_of(parent) if "spawn_main" in cmdline(pid)]
    return [pid for pid in pids if "libtorch" not in maps(pid)]


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_while_workers_import_is_one_line_and_exit_130(tmp_path, inherited):
    db = tmp_path / "importing.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "4", "--storage", f"sqlite:///{db}",
                      *TINY], preexec_fn=ignoring_sigint if inherited == "ignored" else None)
    wait_until(lambda: len(importing_workers(parent.pid)) == 2, what="2 workers importing")
    os.killpg(parent.pid, signal.SIGINT)  # a terminal's Ctrl-C: the parent and each worker
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == 130, err
    assert "Traceback" not in err and "before it reported" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert query(db, "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", 0) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_to_the_group_fails_and_requeues_every_trial_within_10_s(tmp_path, workers):
    """What Slurm's scancel and Kubernetes send: SIGTERM to every process at once."""
    db = tmp_path / "scancel.db"
    search = run_cli(["mlp", "--workers", workers, "--trials", "6", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY])
    wait_for_running(db, int(workers), seconds=240)  # 2 workers start slowly on a loaded box
    sent = time.monotonic()
    os.killpg(search.pid, signal.SIGTERM)
    out, err = search.communicate(timeout=120)
    took = time.monotonic() - sent
    print(f"--workers {workers}: exit {search.returncode} {took:.1f} s after SIGTERM to the "
          f"group, {len(err.splitlines())} stderr line(s)")
    assert search.returncode == 130, err
    assert took < 10, took
    assert sorted(states(db)) == ["FAIL"] * int(workers) + ["WAITING"] * int(workers)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# Data that takes minutes to load: a SIGINT during the load must end it (not wait it out).
SLOW_DATA = """
import time
import search.run
make_dataset = search.run.make_dataset
def slow(*args, **kwargs):
    sys.stderr.write("loading\\n")
    sys.stderr.flush()
    time.sleep(600)
    return make_dataset(*args, **kwargs)
search.run.make_dataset = slow
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigint_stops_a_search_started_with_sigint_ignored(tmp_path, workers):
    """nohup and `cmd &` start a search with SIGINT ignored; `kill -INT` still stops it."""
    db = tmp_path / "nohup.db"
    search = run_cli(["mlp", "--workers", workers, "--trials", "2", "--storage",
                      f"sqlite:///{db}", *TINY], SLOW_DATA, preexec_fn=ignoring_sigint)
    assert search.stderr.readline() == "loading\n"  # past the imports, before any trial
    search.send_signal(signal.SIGINT)
    out, err = search.communicate(timeout=120)
    assert search.returncode == 130, err
    assert err.strip() == "optuna-search: interrupted; nothing was left running"


def test_sigint_stops_workers_started_with_sigint_ignored_once_they_train(tmp_path):
    db = tmp_path / "nohup.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "6", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY], preexec_fn=ignoring_sigint)
    wait_for_running(db, 2)
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=60) == 130
    assert sorted(states(db)) == ["FAIL", "FAIL", "WAITING", "WAITING"]


@pytest.mark.parametrize("to_group", [False, True], ids=["SIGTERM-to-parent", "Ctrl-C"])
def test_the_parent_forwards_a_signal_to_its_workers_and_waits(tmp_path, to_group):
    db = tmp_path / "workers.db"
    parent = run_cli(["mlp", "--workers", "2", "--trials", "6", "--epochs", "2000",
                      "--storage", f"sqlite:///{db}", *TINY])
    wait_for_running(db, 2)
    if to_group:  # a terminal's Ctrl-C reaches the parent and every worker at once
        os.killpg(parent.pid, signal.SIGINT)
    else:
        parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 130
    err = parent.stderr.read()
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(states(db)) == ["FAIL", "FAIL", "WAITING", "WAITING"]  # queued again
    assert integrity(db) == "ok"


def test_out_of_memory_fails_one_trial_frees_its_model_and_the_next_runs(
        tmp_path, monkeypatch, capsys):
    models, freed_at_cleanup = [], []
    build, cleanup = search.objective.build, search.objective.Objective._cleanup

    def tracking_build(name, config):
        model = build(name, config)
        models.append(weakref.ref(model))
        return model

    def tracking_cleanup(checkpoint):
        cleanup(checkpoint)  # gc.collect(), then torch.cuda.empty_cache() on a GPU
        freed_at_cleanup.append(models[-1]() is None)

    train_epoch = search.train.trainer._train_epoch

    def out_of_memory_once(run, batches, first_step, order, epoch):
        if len(models) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train_epoch(run, batches, first_step, order, epoch)

    monkeypatch.setattr(search.objective, "build", tracking_build)
    monkeypatch.setattr(search.objective.Objective, "_cleanup", staticmethod(tracking_cleanup))
    monkeypatch.setattr(search.train.trainer, "_train_epoch", out_of_memory_once)
    db = tmp_path / "oom.db"
    assert main(["mlp", "--trials", "3", "--epochs", "1", "--storage", f"sqlite:///{db}",
                 *TINY]) == 0
    trials = load(db).get_trials()
    # a failed trial does not count: three finished trials are the study's target
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of")
    assert "OutOfMemoryError" in capsys.readouterr().out  # its line says why
    # The failed trial's model (weights, gradients, optimizer state) is gone before the
    # cache is emptied, so its GPU memory really goes back before the next trial.
    assert freed_at_cleanup[0] is True


# ------------------------------------------------------------------ 5. bad input

def refused(argv: list[str], capsys) -> str:
    """Run the command; it must exit 2 with exactly one line on stderr. Returns that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("optuna-search: error: ")
    return lines[0]


BAD_INPUT = {
    "unknown model": ["nosuchmodel", "--workers", "2"],
    "unknown parameter": ["mlp", "--workers", "2", "--set", "nonsense=1"],
    "another model's parameter": ["mlp", "--workers", "2", "--set", "patch_size=8"],
    "malformed --set": ["mlp", "--workers", "2", "--set", "lr"],
    "malformed --grid": ["mlp", "--workers", "2", "--grid", "lr=,"],
    "wrong type": ["mlp", "--workers", "2", "--set", "batch_size=big"],
    "wrong type in a grid": ["mlp", "--workers", "2", "--grid", "lr=0.1,fast"],
    "--trials 0": ["mlp", "--workers", "2", "--trials", "0"],
    "--workers 0": ["mlp", "--workers", "0"],
    "worker --workers 0": ["worker", "mlp", "--workers", "0"],
    "worker --trials 0": ["worker", "mlp", "--trials", "0"],
    "worker without a storage": ["worker", "mlp"],
}


@pytest.mark.parametrize("argv", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv):
    refused([*argv, "--storage", f"sqlite:///{tmp_path / 'new.db'}"], capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["mlp", "--workers", "2", "--data", "synthetic"],
                                     ["worker", "mlp", "--data", "synthetic"], ["studies"]],
                         ids=["--workers", "worker", "studies"])
def test_a_file_that_is_not_an_optuna_storage_is_refused_untouched(tmp_path, capsys, command):
    notes = tmp_path / "notes.db"
    notes.write_text("my notes\n")
    people = tmp_path / "people.db"
    with sqlite3.connect(people) as connection:
        connection.execute("CREATE TABLE people (name TEXT)")
        connection.execute("INSERT INTO people VALUES ('Ada')")
    connection.close()
    lines = tmp_path / "notes.log"
    lines.write_text("not a journal\n")
    files = {path: path.read_bytes() for path in (notes, people, lines)}
    expected = {notes: "not an SQLite file", people: "other tables (people)",
                lines: "not an Optuna journal file"}
    for path, why in expected.items():
        scheme = "journal" if path.suffix == ".log" else "sqlite"
        line = refused([*command, "--storage", f"{scheme}:///{path}"], capsys)
        assert why in line
    assert {path: path.read_bytes() for path in files} == files
    assert sorted(tmp_path.iterdir()) == sorted(files)  # no journal, WAL or artifacts


def test_a_study_of_another_model_is_refused_and_left_as_it_was(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert main(["mlp", "--trials", "1", "--epochs", "1", "--study", "shared",
                 "--storage", url, *TINY]) == 0
    before = load(tmp_path / "shared.db", "shared")
    data = ["--data", "synthetic", "--train-subset", "100", "--test-subset", "100"]
    for argv in (["resnet18", "--workers", "2"], ["mlpmixer"],
                 ["mlp", "--workers", "2", "--set", "activation=tanh"]):
        capsys.readouterr()
        line = refused([*argv, "--study", "shared", "--storage", url, *data], capsys)
        assert "study 'shared' in" in line and "other settings" in line
        assert "(study)" in line and "--study NEW-NAME" in line
    after = load(tmp_path / "shared.db", "shared")
    assert after.user_attrs == before.user_attrs
    assert [(t.number, t.state) for t in after.trials] == [(0, TrialState.COMPLETE)]


def test_an_unreachable_postgresql_is_named_in_one_line_within_seconds(capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://optuna:secret@127.0.0.1:{port}/optuna"
    for command in (["mlp", "--workers", "2"], ["worker", "mlp"], ["studies"]):
        started = time.monotonic()
        line = refused([*command, "--storage", url], capsys)
        assert time.monotonic() - started < 5
        assert f"PostgreSQL at 127.0.0.1:{port} is not reachable" in line


def test_a_postgresql_port_that_never_answers_gives_up_in_seconds(capsys):
    pytest.importorskip("psycopg2")
    from storage.open import PG_CONNECT_SECONDS
    with socket.socket() as silent:  # the kernel completes the handshake; nobody speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql://optuna:secret@127.0.0.1:{silent.getsockname()[1]}/optuna"
        started = time.monotonic()
        line = refused(["worker", "mlp", "--storage", url], capsys)
        assert time.monotonic() - started < PG_CONNECT_SECONDS + 5
    assert "could not open storage" in line and "secret" not in line


HANDLER_INSTALLED_SAYS_GO = """
import signal
install = signal.signal
def installing(signum, handler):
    previous = install(signum, handler)
    if signum == signal.SIGINT and callable(handler) and not hasattr(installing, "said"):
        installing.said = True  # before the write: a SIGINT right after "go" must not say it twice
        sys.stderr.write("go\\n")
        sys.stderr.flush()
    return previous
signal.signal = installing
"""


def test_ctrl_c_at_any_moment_of_the_first_seconds_is_one_line_and_exit_130(tmp_path):
    """Imports (torch, optuna: seconds) run inside main()'s handler: no traceback, ever."""
    db = tmp_path / "early.db"
    # From the moment main() has its handler on. Before it are the interpreter's start-up
    # (~0.2 s of site-packages) and finding the entry module search.cli (~1 ms, stdlib
    # only); a signal there is Python's own. So "go" is written by signal.signal itself,
    # once SIGINT's handler is installed: a condition, not a moment that a loaded machine
    # may move.
    started = HANDLER_INSTALLED_SAYS_GO
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 1.8, 2.5, 3.5):
        search = run_cli(["mlp", "--trials", "2", "--epochs", "50", "--storage",
                          f"sqlite:///{db}", *TINY], started)
        assert search.stderr.readline() == "go\n"
        time.sleep(delay)  # a moment of the start-up, not a condition: any moment must do
        search.send_signal(signal.SIGINT)
        out, err = search.communicate(timeout=120)
        assert search.returncode == 130, (delay, err[-2000:])
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (delay, err)
        if db.exists():  # interrupted before or after the study was made: nothing RUNNING
            assert query(db, "SELECT COUNT(*) FROM trials WHERE state = 'RUNNING'", 0) == 0
            assert integrity(db) == "ok"
    # However far it got (a file with some tables, a study without its spec, a trial
    # queued again), the same command completes the study.
    again = run_cli(["mlp", "--trials", "2", "--epochs", "50", "--storage", f"sqlite:///{db}",
                     *TINY])
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert query(db, "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')") == 2


# Ctrl-C raised where Python can only print "Exception ignored" (a __del__, a weakref or
# module-lock callback of the import machinery): the KeyboardInterrupt is lost, not the
# Ctrl-C. Caused here for certain: the first import after main()'s handler is on runs a
# finalizer that sends SIGINT to this process and lets the handler run inside it.
INTERRUPT_LOST_IN_A_FINALIZER = """
import os, signal, sys
class Finalizer:
    def __del__(self):
        print("finalizer sends SIGINT", flush=True)  # on stdout: stderr must hold one line
        signal.raise_signal(signal.SIGINT)
        sum(range(1000))  # bytecode for the handler to run in
class FirstImportLosesCtrlC:
    def find_spec(self, name, path=None, target=None):
        if callable(signal.getsignal(signal.SIGINT)) and name.startswith("search.cli."):
            sys.meta_path.remove(self)
            Finalizer()  # made and collected at once: __del__ runs here
        return None
sys.meta_path.insert(0, FirstImportLosesCtrlC())
"""


def test_ctrl_c_lost_in_a_finalizer_during_the_imports_still_stops_with_130(tmp_path):
    search = run_cli(["mlp", "--trials", "2", "--epochs", "50", "--storage",
                      f"sqlite:///{tmp_path / 'lost.db'}", *TINY], INTERRUPT_LOST_IN_A_FINALIZER)
    out, err = search.communicate(timeout=120)
    assert out == "finalizer sends SIGINT\n"  # the interrupt was raised where Python loses it
    assert search.returncode == 130, err[-2000:]
    assert err == "optuna-search: interrupted; nothing was left running\n"  # no "Exception ignored"
    assert not (tmp_path / "lost.db").exists()  # stopped before the study was made
