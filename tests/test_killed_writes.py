"""A process killed in the middle of a write leaves a storage the next command uses:

1. killed while a new SQLite file's tables are made (before WAL mode): a hot journal
   X.db-journal, which only a read-write connection rolls back;
2. killed between marking a dead trial FAIL and queuing its retry: the next process that
   looks queues the retry, so the point still runs exactly once;
3. killed between claiming a trial (RUNNING) and writing its first heartbeat: a trial that
   never beat is judged by its start, so it goes stale within the grace and runs again once
   (on SQLite and on PostgreSQL).
Each fault is caused for real: a SIGKILL at that moment.
"""
from __future__ import annotations

import datetime
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from helpers import FAST_HEARTBEAT, TINY, integrity, load, run_cli, wait_until
from pg_server import pg_study_name, pg_url  # noqa: F401 (fixtures)
from search.cli import main
from storage import open_storage, open_store
from storage.internals import stale_trial_ids

# 1 -------------------------------------------------------------------------------------------
# A writer killed mid-transaction in rollback-journal mode, as a process making a new file's
# tables is: Optuna's tables made, then rows written with a one-page cache (so changed pages
# reach the file before the commit), then SIGKILL. What is left is a genuine hot journal.
HALF_WRITTEN = textwrap.dedent("""
    import sqlite3, sys, time, optuna
    path = sys.argv[1]
    optuna.storages.RDBStorage(f"sqlite:///{path}").engine.dispose()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA cache_size=1")
    connection.execute("BEGIN IMMEDIATE")
    for i in range(50):
        connection.execute("INSERT INTO studies (study_name) VALUES (?)", ("x" * 200 + str(i),))
    print("mid-write", flush=True)
    time.sleep(600)
""")


def killed_mid_write(db: Path) -> Path:
    """db with the hot journal of a writer SIGKILLed mid-transaction; returns the journal."""
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITTEN, str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "mid-write\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    journal = db.with_name(db.name + "-journal")
    assert journal.stat().st_size > 0
    return journal


def test_a_write_killed_mid_transaction_is_rolled_back_and_the_next_search_runs(tmp_path,
                                                                                capsys):
    db = tmp_path / "s.db"
    journal = killed_mid_write(db)
    assert main(["studies", "--storage", f"sqlite:///{db}"]) == 0   # a reader rolls it back
    assert not journal.exists() and integrity(db) == "ok"
    assert main(["mlp", "--trials", "1", "--epochs", "1", "--storage", f"sqlite:///{db}",
                 *TINY]) == 0
    assert [t.state for t in load(db).get_trials()] == [TrialState.COMPLETE]
    assert "Traceback" not in capsys.readouterr().err


def test_a_hot_journal_that_cannot_be_rolled_back_here_is_one_line_naming_the_file(
        tmp_path, tiny_disk, capsys):
    db = tmp_path / "s.db"
    journal = killed_mid_write(db)
    for made in (db, journal):
        shutil.copy2(made, tiny_disk / made.name)
    assert subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)]).returncode == 0
    assert main(["studies", "--storage", f"sqlite:///{tiny_disk / db.name}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tiny_disk / db.name} has a write left unfinished" in err[0], err
    assert "s.db-journal" in err[0]


# 2 -------------------------------------------------------------------------------------------
# A worker that kills itself in epoch 2 of its first trial (no cleanup: its trial stays RUNNING
# and goes stale), and one that kills itself the moment it is to queue a retry: after it has
# marked a dead trial FAIL, the one moment a retry could be lost.
KILLED_IN_EPOCH_2 = """
import os, signal
import search.train.trainer as trainer
train_epoch = trainer._train_epoch
def dying(run, batches, first_step, order, epoch):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return train_epoch(run, batches, first_step, order, epoch)
trainer._train_epoch = dying
"""
KILLED_BEFORE_THE_RETRY = """
import os, signal
import optuna
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
optuna.storages.RetryHeartbeatStaleTrialCallback.__call__ = killed
"""


@pytest.mark.parametrize("grid", [True, False], ids=["grid", "trials"])
def test_a_process_killed_between_a_fail_and_its_retry_loses_no_retry(tmp_path, grid):
    db = tmp_path / "s.db"
    command = ["mlp", "--study", "s", "--epochs", "3", "--storage", f"sqlite:///{db}", *TINY,
               *(["--grid", "activation=relu,tanh"] if grid else ["--trials", "2"])]
    first = run_cli(command, KILLED_IN_EPOCH_2, **FAST_HEARTBEAT)
    assert first.wait(timeout=300) == -signal.SIGKILL, first.stderr.read()
    [dead] = [t for t in load(db, "s").get_trials() if t.state == TrialState.RUNNING]
    time.sleep(5)  # past the 4 s grace: the dead trial is stale at the next process's claim

    failer = run_cli(command, KILLED_BEFORE_THE_RETRY, **FAST_HEARTBEAT)
    assert failer.wait(timeout=300) == -signal.SIGKILL, failer.stderr.read()
    trials = load(db, "s").get_trials()
    assert trials[dead.number].state == TrialState.FAIL         # failed, and then killed:
    assert not any(t.system_attrs.get("retry_history") for t in trials)   # no retry queued

    last = run_cli(command, **FAST_HEARTBEAT)
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, err[-2000:]
    trials = load(db, "s").get_trials()
    [retry] = [t for t in trials if t.system_attrs.get("retry_history") == [dead.number]]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and not [t for t in trials if t.state == TrialState.RUNNING]
    if grid:   # each point finished exactly once
        assert sorted(t.params["activation"] for t in complete) == ["relu", "tanh"]
    assert integrity(db) == "ok"


# 3 -------------------------------------------------------------------------------------------
# A launcher that kills itself the moment study.ask() returns its second trial: that trial is
# RUNNING, and the process dies before it writes the trial's first heartbeat (while it holds
# the study's lock, which its death releases).
KILLED_BEFORE_THE_FIRST_BEAT = """
import os, signal
import optuna
ask, asked = optuna.Study.ask, []
def ask_then_die(self, *args, **kwargs):
    trial = ask(self, *args, **kwargs)
    asked.append(trial.number)
    if len(asked) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return trial
optuna.Study.ask = ask_then_die
"""


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")   # we beat ourselves
def test_a_trial_that_never_beat_is_judged_by_its_start_and_not_before_the_grace(
        tmp_path, monkeypatch):
    for key, value in FAST_HEARTBEAT.items():
        monkeypatch.setenv(key, value)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=store.optuna)
    silent, beating = study.ask(), study.ask()
    store.beat_once(beating)

    def judged() -> dict[int, float]:
        """{trial number: seconds since its start} of the trials judged dead now."""
        now, stale = datetime.datetime.now(), stale_trial_ids(store.optuna, study)
        return {t.number: (now - t.datetime_start).total_seconds()
                for t in study.get_trials() if t._trial_id in stale}

    assert judged() == {}   # just claimed: never judged, beat or not
    wait_until(lambda: silent.number in judged(), 30, "the silent trial judged dead")
    grace = float(FAST_HEARTBEAT["OPTUNA_SEARCH_GRACE"])
    assert judged()[silent.number] >= grace
    wait_until(lambda: beating.number in judged(), 30, "the beating one too, once silent")


@pytest.mark.parametrize("grid", [True, False], ids=["grid", "trials"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_trial_whose_claimer_died_before_its_first_beat_runs_once_within_the_grace(
        tmp_path, request, kind, grid):
    if kind == "sqlite":
        url, name = f"sqlite:///{tmp_path / 's.db'}", "s"
    else:
        url, name = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_study_name")
    command = ["mlp", "--study", name, "--epochs", "1", "--storage", url, *TINY,
               *(["--grid", "activation=relu,sigmoid,tanh"] if grid else ["--trials", "3"])]
    first = run_cli(command, KILLED_BEFORE_THE_FIRST_BEAT, **FAST_HEARTBEAT)
    assert first.wait(timeout=300) == -signal.SIGKILL, first.stderr.read()
    storage = open_storage(url, heartbeat=False)
    study = optuna.load_study(study_name=name, storage=storage)
    [dead] = study.get_trials(states=(TrialState.RUNNING,))
    with storage.engine.connect() as connection:   # it never beat: Optuna never judges it
        assert connection.execute(sqlalchemy.text(
            "SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = :id"),
            {"id": dead._trial_id}).scalar_one() == 0

    # A launcher started at once: it runs what is left, and the dead trial again once it is
    # past the grace (before, it waited for ever: "1 trial(s) still running elsewhere").
    last = run_cli(command, **FAST_HEARTBEAT)
    try:
        out, err = last.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        last.kill()
        out, err = last.communicate()
        pytest.fail(f"the new launcher still ran after 180 s: {out[-300:]}")
    assert last.returncode == 0, err[-2000:]
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4, [(t.number, t.state) for t in trials]
    if grid:   # each point finished exactly once
        assert sorted(t.params["activation"] for t in complete) == ["relu", "sigmoid", "tanh"]
    failed = trials[dead.number]
    assert failed.state == TrialState.FAIL
    [retry] = [t for t in trials if t.system_attrs.get("retry_history") == [dead.number]]
    assert retry.state == TrialState.COMPLETE
    if grid:   # the point it was to run (killed before it read it)
        assert retry.params == failed.system_attrs["fixed_params"]

    # Within the grace: failed at the first claim of the new launcher past the dead trial's
    # start + grace (after a trial of its own, or a poll of one heartbeat), never before.
    grace = float(FAST_HEARTBEAT["OPTUNA_SEARCH_GRACE"])
    since = failed.datetime_complete - failed.datetime_start
    assert since.total_seconds() >= grace, since
    later = [t for t in trials if t.datetime_start > dead.datetime_start and t != failed]
    first_claim = min(t.datetime_start for t in later)
    longest = max((t.datetime_complete - t.datetime_start).total_seconds() for t in later)
    due = max(dead.datetime_start + datetime.timedelta(seconds=grace), first_claim)
    late = (failed.datetime_complete - due).total_seconds()
    print(f"failed {since.total_seconds():.1f} s after its start (grace {grace:g} s), "
          f"{late:.1f} s after it was due; the new launcher's longest trial {longest:.1f} s")
    assert late <= longest + 1 + 2, (late, longest)   # a trial or a 1 s poll, 2 s of load
    if kind == "sqlite":
        assert integrity(tmp_path / "s.db") == "ok"
