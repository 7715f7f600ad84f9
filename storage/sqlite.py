"""SQLite made safe for several processes: writers that take the write lock at BEGIN, readers
that never take it (one maker of a new file's tables: storage/schema.py); and for several
threads: helper threads that keep signals off their SQLite calls."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SQLiteSettings:
    """How every connection to one SQLite file behaves (kept when the storage is pickled).

    - WAL: readers never block the writer, nor it them; it persists in the file.
    - synchronous=NORMAL: in WAL mode a crash can lose the last commit, never corrupt the file;
      it saves an fsync per commit (a trial commits ~20 times).
    - Writers (readonly=False) BEGIN IMMEDIATE: Optuna reads a trial's state, then writes it
      (popping a WAITING trial, failing a stale one). pysqlite runs that read outside any
      transaction, so two workers could both pop the same trial; and a read transaction that
      later writes fails at once with "database is locked" when another process wrote in
      between (busy timeouts do not apply to that upgrade). Taking the write lock at BEGIN
      makes each transaction atomic and makes every waiter wait (up to busy_seconds).
    - Readers (readonly=True: dashboard, report, studies) BEGIN DEFERRED: in WAL mode they read
      a snapshot and take no lock that a writer waits for, so a slow page stalls no trial.
      Should a reader write (the dashboard's notes), the retry of storage/resilient.py covers
      the rare "database is locked" of the upgrade.
    """
    path: Path
    readonly: bool = False
    busy_seconds: float = 60.0

    def install(self, engine) -> None:
        from sqlalchemy import event
        begin = "BEGIN" if self.readonly else "BEGIN IMMEDIATE"

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
            dbapi_connection.execute(f"PRAGMA busy_timeout={int(self.busy_seconds * 1000)}")
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

        @event.listens_for(engine, "begin")
        def _on_begin(connection):
            connection.exec_driver_sql(begin)

        engine.dispose()  # connections opened while Optuna made its tables lack the hooks


def keep_signals_off_this_thread() -> None:
    """Block SIGINT, SIGTERM and SIGALRM in the calling (helper) thread.

    The kernel gives a signal sent to the process to any thread that does not block it. One
    landing in a thread inside an SQLite call makes that call fail with EINTR ("disk I/O
    error"), and the broken connection goes back to the pool. Python handles signals in the
    main thread anyway: every other thread of ours blocks them.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGALRM})
