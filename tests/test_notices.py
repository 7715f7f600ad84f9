"""What a ridden-out storage fault says (storage/notices.py): Optuna's and SQLAlchemy's own
records of a storage fault are dropped, a real error stays visible in one line without SQL,
and the retries say one line now and then. The faults are real: SQLite's lock held by another
connection, a missing table. (The storm on PostgreSQL, end to end: tests/test_outage_cli.py.)"""
from __future__ import annotations

import contextlib
import logging
import sqlite3

import pytest
import sqlalchemy

from storage import internals, notices
from storage.open import open_storage


class Kept(logging.Handler):
    """The records a logger lets through (its filters run before its handlers)."""

    def __init__(self, name: str):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "Kept":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *_) -> None:
        self.logger.removeHandler(self)


@pytest.fixture
def db(tmp_path):
    """An Optuna storage file (opening it installs the filters), and SQLAlchemy on it."""
    path = tmp_path / "study.db"
    open_storage(f"sqlite:///{path}", heartbeat=False)
    return path


@contextlib.contextmanager
def locked(path):
    """Another connection holds the file's write lock."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_optuna_s_warning_of_a_storage_fault_is_dropped(db):
    engine = sqlalchemy.create_engine(f"sqlite:///{db}", connect_args={"timeout": 0})
    with locked(db), Kept(internals.OPTUNA_RDB_LOGGER) as kept, engine.begin() as connection:
        try:
            connection.execute(sqlalchemy.text("UPDATE studies SET study_name = 'x'"))
        except sqlalchemy.exc.OperationalError as error:  # database is locked: transient
            # what Optuna's RDBStorage._get_trials logs, inside its `except`
            logging.getLogger(internals.OPTUNA_RDB_LOGGER).warning(
                f"Caught an error from sqlalchemy: {error!s}. Falling back.")
    assert kept.records == []


def test_optuna_s_warning_of_a_real_error_is_one_line_without_the_sql(db):
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with Kept(internals.OPTUNA_RDB_LOGGER) as kept, engine.connect() as connection:
        try:
            connection.execute(sqlalchemy.text("SELECT * FROM no_such_table WHERE 1 = 1"))
        except sqlalchemy.exc.OperationalError as error:  # no storage fault: a bug, shown
            assert "[SQL:" in str(error)
            logging.getLogger(internals.OPTUNA_RDB_LOGGER).warning(
                f"Caught an error from sqlalchemy: {error!s}. Falling back.")
    [record] = kept.records
    said = record.getMessage()
    assert "no such table" in said and "\n" not in said and "SELECT" not in said, said


def test_sqlalchemy_s_pool_error_about_a_storage_fault_is_dropped_and_others_are_kept(db):
    pool = logging.getLogger(notices.POOL_LOGGERS[0])
    with locked(db), Kept(pool.name) as kept:
        locked_out = sqlite3.connect(db, timeout=0)
        try:
            locked_out.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            pool.error("Exception during reset or similar", exc_info=True)
        try:
            raise ValueError("a bug")
        except ValueError:
            pool.error("Exception during reset or similar", exc_info=True)
        locked_out.close()
    [record] = kept.records
    assert isinstance(record.exc_info[1], ValueError)


def test_retries_say_one_line_at_the_first_recovery_then_at_most_once_a_minute(
        caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(notices.time, "monotonic", lambda: clock[0])
    reconnects = notices.Reconnects("postgresql://u:***@db/x")
    with caplog.at_level(logging.WARNING, logger=notices.log.name):
        for second in range(50):          # a storm: a drop every 0.5 s for 25 s
            clock[0] = 1000.0 + second / 2
            reconnects.retried()
            reconnects.back("connection lost")
        assert len(caplog.records) == 1
        clock[0] += notices.SAY_EVERY_SECONDS
        reconnects.retried()
        reconnects.back("connection lost")
    first, later = (r.getMessage() for r in caplog.records)
    assert first == ("storage postgresql://u:***@db/x: connection lost; carried on after "
                     "retrying (1 retry so far)")
    assert later.endswith("(51 retries so far)")
