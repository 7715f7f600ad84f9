"""The storage under faults caused for real: SQLite locked past its busy timeout, several
processes making one new file, readers beside writers, a full and a read-only disk, a corrupt
file, a lost answer to a write; PostgreSQL stopped past the patience (marked `postgres`).

PostgreSQL tests need OPTUNA_SEARCH_PG_URL and the right to stop its server (tests/pg_server.py).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

import storage.open
from storage import (StorageError, StorageFailure, StorageUnavailable, check_writable,
                     open_storage, sqlalchemy_url)
from storage.resilient import CLAIMED_KEY

from helpers import integrity
from pg_server import pg_ctl, pg_study, pg_url  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def new_trial(storage, study: str = "s") -> int:
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], study)
    return storage.create_new_trial(study_id)


@contextlib.contextmanager
def write_lock_held(db: Path, seconds: float):
    """Another process's writer (a raw connection) holding SQLite's write lock for `seconds`."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(seconds, lambda: holder.execute("COMMIT"))
    timer.start()
    try:
        yield
    finally:
        timer.join()
        holder.close()


@pytest.fixture
def short_busy_timeout(monkeypatch):
    monkeypatch.setattr(storage.open, "SQLITE_BUSY_SECONDS", 0.2)


# ------------------------------------------------------------------ SQLite locked

def test_sqlite_locked_past_its_busy_timeout_is_retried_not_fatal(tmp_path, short_busy_timeout):
    db = tmp_path / "locked.db"
    store = open_storage(f"sqlite:///{db}", heartbeat=False)
    trial_id = new_trial(store)
    started = time.monotonic()
    with write_lock_held(db, 1.5):  # 7 busy timeouts of 0.2 s
        store.set_trial_intermediate_value(trial_id, 1, 0.5)
    assert time.monotonic() - started >= 1.4  # it did wait for the lock
    assert store.get_trial(trial_id).intermediate_values == {1: 0.5}
    assert integrity(db) == "ok"


def test_sqlite_locked_past_the_patience_is_one_line_naming_the_file(tmp_path,
                                                                     short_busy_timeout):
    db = tmp_path / "locked.db"
    store = open_storage(f"sqlite:///{db}", heartbeat=False, patience=0.5)
    trial_id = new_trial(store)
    with write_lock_held(db, 2.0):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as raised:
            store.set_trial_intermediate_value(trial_id, 1, 0.5)
        assert time.monotonic() - started < 1.5
    message = str(raised.value)
    assert "\n" not in message and str(db) in message and "database is locked" in message
    store.set_trial_intermediate_value(trial_id, 1, 0.5)  # the same object works afterwards
    assert integrity(db) == "ok"


# ------------------------------------------------------------------ SQLite: many processes

OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
import optuna
from storage import open_storage
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.002)
optuna.create_study(study_name="study-" + sys.argv[3],
                    storage=open_storage(sys.argv[1], heartbeat=False))
"""


def test_eight_processes_make_one_new_file_at_once(tmp_path):
    db, go = tmp_path / "new.db", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, f"sqlite:///{db}",
                                   str(go), str(i)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(8)]
    for process in processes:  # every one has imported everything: they open at once
        assert process.stdout.readline() == "ready\n", process.stderr.read()
    go.touch()
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, errors
    names = set(optuna.get_all_study_names(storage=f"sqlite:///{db}"))
    assert names == {f"study-{i}" for i in range(8)}
    assert integrity(db) == "ok"


@pytest.mark.postgres
def test_eight_processes_make_one_new_postgresql_database_s_tables_at_once(pg_url, tmp_path):
    """An array of Slurm tasks or a Job's pods starting together on a new database."""
    import sqlalchemy
    database = f"optuna_search_race_{os.getpid()}"
    server = sqlalchemy.create_engine(sqlalchemy_url(pg_url), isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database}"))
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    url = pg_url.rsplit("/", 1)[0] + "/" + database
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(go),
                                       str(i)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for i in range(8)]
        for process in processes:
            assert process.stdout.readline() == "ready\n", process.stderr.read()
        go.touch()
        errors = [process.communicate(timeout=120)[1] for process in processes]
        assert [process.returncode for process in processes] == [0] * 8, errors
        names = set(optuna.get_all_study_names(storage=open_storage(url, readonly=True)))
        assert names == {f"study-{i}" for i in range(8)}
    finally:
        with server.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database} "
                                               "WITH (FORCE)"))
        server.dispose()


def test_a_reader_never_blocks_a_writer(tmp_path, short_busy_timeout):
    db = tmp_path / "shared.db"
    writer = open_storage(f"sqlite:///{db}", heartbeat=False, patience=0)
    trial_id = new_trial(writer)
    reader = open_storage(f"sqlite:///{db}", readonly=True)
    session = reader.scoped_session()  # a slow dashboard page: a read transaction left open
    try:
        session.execute(optuna.storages._rdb.models.TrialModel.__table__.select()).all()
        for step in range(1, 4):  # patience 0: one attempt, 0.2 s busy timeout
            writer.set_trial_intermediate_value(trial_id, step, 0.1)
            writer.record_heartbeat(trial_id)
    finally:
        session.rollback()
        reader.remove_session()
    assert writer.get_trial(trial_id).intermediate_values == {1: 0.1, 2: 0.1, 3: 0.1}
    assert integrity(db) == "ok"


def holds_write_lock(store, db: Path) -> bool:
    """Whether a transaction of `store` that has only read holds SQLite's write lock."""
    session = store.scoped_session()
    try:
        session.execute(optuna.storages._rdb.models.StudyModel.__table__.select()).all()
        with contextlib.closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as other:
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError as error:
                assert "locked" in str(error)
                return True
    finally:
        session.rollback()
        store.remove_session()


def sqlite_pragmas(store) -> tuple:
    with store.engine.connect() as connection:
        return tuple(connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                     for name in ("busy_timeout", "journal_mode", "synchronous"))


def test_a_pickled_storage_keeps_its_sqlite_settings(tmp_path):
    db = tmp_path / "pickled.db"
    writer = open_storage(f"sqlite:///{db}", heartbeat=False)
    reader = open_storage(f"sqlite:///{db}", readonly=True)
    for store, writes in ((writer, True), (reader, False)):
        copy = pickle.loads(pickle.dumps(store))
        assert (copy.patience, copy.sqlite) == (store.patience, store.sqlite)
        assert holds_write_lock(store, db) == holds_write_lock(copy, db) == writes
        assert sqlite_pragmas(copy) == sqlite_pragmas(store) == (60000, "wal", 1)
    assert integrity(db) == "ok"


# ------------------------------------------------------------------ a lost answer

@contextlib.contextmanager
def answer_lost(store):
    """The first write committed in the block lands, but its call fails as if the connection
    had dropped before the answer came back (a server restart at the wrong moment)."""
    from sqlalchemy import event
    factory, happened = store.scoped_session.session_factory, {"wrote": False, "lost": 0}

    def after_flush(_session, _context):
        happened["wrote"] = True

    def after_commit(_session):
        wrote, happened["wrote"] = happened["wrote"], False
        if wrote and not happened["lost"]:
            happened["lost"] += 1
            error = sqlite3.OperationalError("connection lost after commit")
            error.sqlite_errorname = "SQLITE_BUSY"  # transient: the call is run again
            raise error
    event.listen(factory, "after_flush", after_flush)
    event.listen(factory, "after_commit", after_commit)
    try:
        yield
    finally:
        event.remove(factory, "after_flush", after_flush)
        event.remove(factory, "after_commit", after_commit)
    assert happened["lost"] == 1, "no write was committed in the block"


def test_a_lost_answer_never_doubles_a_write(tmp_path):
    db = tmp_path / "lost.db"
    store = open_storage(f"sqlite:///{db}", heartbeat=False)
    with answer_lost(store):
        study = optuna.create_study(study_name="s", storage=store)
    with answer_lost(store):
        trial_id = store.create_new_trial(study._study_id)
    with answer_lost(store):
        store.set_trial_intermediate_value(trial_id, 1, 0.5)
    with answer_lost(store):
        study.enqueue_trial({"x": 1.0})
    waiting = study.trials[-1]._trial_id
    with answer_lost(store):
        assert store.set_trial_state_values(waiting, TrialState.RUNNING)  # ours after all
    with answer_lost(store):
        assert store.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    assert optuna.get_all_study_names(storage=store) == ["s"]
    trials = study.get_trials()
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE),
                                                     (1, TrialState.RUNNING)]
    assert trials[0].intermediate_values == {1: 0.5} and trials[0].values == [1.0]
    assert CLAIMED_KEY not in trials[1].system_attrs   # our tokens: hidden from readers
    assert not store.set_trial_state_values(waiting, TrialState.RUNNING)  # not ours twice
    with pytest.raises(UpdateFinishedTrialError):  # a real second finish is still refused
        store.set_trial_state_values(trial_id, TrialState.FAIL)
    with answer_lost(store):
        optuna.delete_study(study_name="s", storage=store)
    assert optuna.get_all_study_names(storage=store) == []
    assert integrity(db) == "ok"


# ------------------------------------------------------------------ a corrupt file

def test_a_corrupt_file_is_one_line_naming_it(tmp_path):
    db = tmp_path / "corrupt.db"
    store = open_storage(f"sqlite:///{db}", heartbeat=False)
    study = optuna.create_study(study_name="s", storage=store)
    for _ in range(20):
        study.add_trial(optuna.create_trial(value=1.0))
    store.engine.dispose()
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = connection.execute("SELECT rootpage FROM sqlite_master "
                                  "WHERE name = 'trials'").fetchone()[0]
    connection.close()
    page = 4096
    with open(db, "r+b") as handle:  # scribble over the trials table's first page
        handle.seek((root - 1) * page)
        handle.write(b"\xff" * page)
    started = time.monotonic()
    with pytest.raises(StorageFailure) as raised:
        store.get_all_trials(study._study_id)
    assert time.monotonic() - started < 5  # at once, not after the patience
    message = str(raised.value)
    assert "\n" not in message and str(db) in message and "corrupt" in message


# ------------------------------------------------------------------ a full or read-only disk

def test_a_full_disk_is_one_line_naming_the_file_at_once(tiny_disk):
    db = tiny_disk / "full.db"
    url = f"sqlite:///{db}"
    store = open_storage(url, heartbeat=False)  # patience 120 s: a full disk must not wait it
    trial_id = new_trial(store)
    started = time.monotonic()
    with pytest.raises(StorageFailure) as raised:
        for key in range(100):
            store.set_trial_user_attr(trial_id, f"curve{key}", "x" * 4000)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert message == f"storage {db}: the disk is full"
    with pytest.raises(StorageError, match=f"no space left for the study in {tiny_disk}"):
        check_writable(url)
    assert store.get_trial(trial_id).state == TrialState.RUNNING  # reads still work
    store.engine.dispose()
    assert integrity(db) == "ok"


def test_a_read_only_file_system_is_one_line_naming_it(tiny_disk):
    db = tiny_disk / "ro.db"
    url = f"sqlite:///{db}"
    store = open_storage(url, heartbeat=False)
    trial_id = new_trial(store)
    store.engine.dispose()  # the kernel remounts read-only only with no file open for writing
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    started = time.monotonic()
    with pytest.raises(StorageFailure) as raised:
        store.set_trial_intermediate_value(trial_id, 1, 0.5)
    assert time.monotonic() - started < 5
    assert str(raised.value) == f"storage {db}: read-only file system"
    with pytest.raises(StorageError, match="read-only file system"):
        check_writable(url)
    store.engine.dispose()
    subprocess.run(["mount", "-o", "remount,rw", str(tiny_disk)], check=True)
    assert integrity(db) == "ok"


def test_check_writable_creates_nothing_and_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTUNA_SEARCH_ARTIFACTS", raising=False)
    check_writable(f"sqlite:///{tmp_path / 'new.db'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite:///{}/typo.db", "journal:///{}/typo.log"])
def test_a_reader_refuses_a_missing_file_and_creates_nothing(tmp_path, url):
    with pytest.raises(StorageError, match="no storage at"):
        open_storage(url.format(tmp_path), readonly=True)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ PostgreSQL stopped

@pytest.mark.postgres
def test_postgresql_down_past_the_patience_is_one_line_then_the_storage_works_again(
        pg_url, pg_study):
    store, study = pg_study
    store.patience = 3.0
    trial_id = study.ask()._trial_id
    pg_ctl(pg_url, "stop")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        store.set_trial_intermediate_value(trial_id, 1, 0.5)
    waited = time.monotonic() - started
    assert 3.0 <= waited < 3.0 + 6  # patience, plus one connect attempt at most
    message = str(raised.value)
    assert "\n" not in message and "unreachable for 3 s" in message
    assert "postgresql://" in message and ":***@" in message  # named, password hidden
    pg_ctl(pg_url, "start")
    store.set_trial_intermediate_value(trial_id, 1, 0.5)  # the same object, no reopening
    store.record_heartbeat(trial_id)
    assert store.get_trial(trial_id).intermediate_values == {1: 0.5}
