"""Open the storage a URL names, after checking it, and find the artifact store beside it.

- sqlite:///path.db (the default, ./optuna-search.db): an RDBStorage in WAL mode whose every
  transaction starts with BEGIN IMMEDIATE and waits up to a minute for the write lock, so
  several worker processes never fail "database is locked" and never take the same trial;
- journal:///path.log (or a path ending in .log / .jsonl): Optuna's JournalStorage on a file,
  for several processes on one machine without a database;
- postgresql://user:pass@host/db: an RDBStorage for studies shared by many machines.
RDB storages run Optuna's heartbeat: a trial whose worker died is marked FAIL and retried
(RetryHeartbeatStaleTrialCallback) with its intermediate values.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import sqlite3
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.artifacts import FileSystemArtifactStore

DEFAULT_STORAGE = "sqlite:///optuna-search.db"
# A running trial writes a heartbeat every HEARTBEAT seconds; one silent for GRACE seconds is
# taken for dead (FAIL) and retried. Read at each open, so tests and spawned workers can
# shorten them through the environment.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 90
MAX_RETRY = 3
SQLITE_BUSY_SECONDS = 60      # how long a writer waits for the lock before giving up
PG_CONNECT_SECONDS = 5
_SQLITE_MAGIC = b"SQLite format 3\x00"
_OPTUNA_TABLES = {"studies", "trials", "version_info"}


class StorageError(ValueError):
    """The storage URL is malformed, unreachable, or names something that is not a storage."""


def _kind(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        return "postgresql"
    if scheme == "journal" or (not scheme and url.endswith((".log", ".jsonl"))):
        return "journal"
    raise StorageError(f"storage URL {redact(url)!r} is not understood; use "
                       "sqlite:///FILE.db, journal:///FILE.log or "
                       "postgresql://USER:PASSWORD@HOST/DB")


def _local_path(url: str) -> Path:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith("journal:///"):
        return Path(url[len("journal:///"):])
    return Path(url)


def check_url(url: str, must_exist: bool = False) -> str:
    """Check a URL without creating anything; return its kind. Raises StorageError.

    must_exist: for commands that read or join a study (studies, report, dashboard, worker),
    a missing local file is an error, not an empty database made at a mistyped path.
    """
    kind = _kind(url)
    if kind in ("sqlite", "journal"):
        path = _local_path(url)
        in_memory = kind == "sqlite" and not url.startswith("sqlite:///")
        if in_memory or str(path) in ("", ".", "/", ":memory:"):
            # sqlite:// and sqlite:///:memory: are in-memory: the study would vanish on exit
            raise StorageError(f"storage URL {url!r} names no file; e.g. sqlite:///study.db")
        if not path.parent.resolve().is_dir():
            raise StorageError(f"storage folder {path.parent} does not exist")
        if must_exist and not path.is_file():
            raise StorageError(f"no storage at {path}; run a search first, or check --storage")
        if path.exists() and path.stat().st_size > 0:
            _check_existing_file(kind, path)
    if kind == "postgresql":
        parts = urlsplit(url)
        if not parts.hostname:
            raise StorageError(f"storage URL {redact(url)!r} names no host")
        try:  # a quick TCP check gives a clear message in seconds instead of a long hang
            with socket.create_connection((parts.hostname, parts.port or 5432),
                                          timeout=PG_CONNECT_SECONDS):
                pass
        except OSError as error:
            raise StorageError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432} is not "
                               f"reachable ({error.strerror or error})") from None
    return kind


def _check_existing_file(kind: str, path: Path) -> None:
    """Refuse a file that is not an Optuna storage, rather than write Optuna's tables into it."""
    if kind == "journal":
        with open(path, "rb") as handle:
            first = handle.readline()
        try:
            if "op_code" not in json.loads(first):
                raise ValueError
        except (ValueError, TypeError):
            raise StorageError(f"{path} is not an Optuna journal file") from None
        return
    with open(path, "rb") as handle:
        if handle.read(16) != _SQLITE_MAGIC:
            raise StorageError(f"{path} is not an SQLite file, so not an Optuna storage")
    try:  # read-only: checking must not write (not even a journal) into someone else's file
        with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) as connection:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        connection.close()
    except sqlite3.DatabaseError as error:
        raise StorageError(f"{path} is not a readable SQLite file ({error})") from None
    # Only some of Optuna's tables is fine: another process may be making them right now.
    if tables and not tables & _OPTUNA_TABLES:
        shown = ", ".join(sorted(tables)[:5])
        raise StorageError(f"{path} is an SQLite file with other tables ({shown}), not an "
                           "Optuna storage; name another file with --storage")


def open_storage(url: str = DEFAULT_STORAGE, heartbeat: bool = True):
    """The Optuna storage for `url` (checked first). Creates the SQLite/journal file."""
    kind = check_url(url)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(_local_path(url))))
    heartbeat_kwargs = {}
    if heartbeat:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                                message=".*(RetryHeartbeatStaleTrialCallback|heartbeat)")
        heartbeat_kwargs = dict(
            heartbeat_interval=_env_seconds("OPTUNA_SEARCH_HEARTBEAT", HEARTBEAT_SECONDS),
            grace_period=_env_seconds("OPTUNA_SEARCH_GRACE", GRACE_SECONDS),
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRY, inherit_intermediate_values=True))
    if kind == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    else:
        engine_kwargs = {"connect_args": {"connect_timeout": PG_CONNECT_SECONDS},
                         "pool_pre_ping": True}
    try:
        storage = optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs=engine_kwargs,
                                             **heartbeat_kwargs)
    except Exception as error:
        raise StorageError(f"could not open storage {redact(url)!r}: "
                           f"{redact(str(error).splitlines()[0][:200])}") from None
    if kind == "sqlite":
        _serialize_sqlite_writers(storage.engine)
    return storage


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy needs: postgresql://... names its driver, since SQLAlchemy 2.1
    picks psycopg 3 by default while the `postgres` extra installs psycopg2."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module in ("psycopg2", "psycopg"):
        if importlib.util.find_spec(module):
            return f"postgresql+{module}://{rest}"
    raise StorageError("PostgreSQL needs a driver: pip install 'optuna-search[postgres]'")


def redact(text: str) -> str:
    """Hide the password of any URL in `text`: messages end up in logs and terminals."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def _env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return max(1, int(text)) if text else default
    except ValueError:
        raise StorageError(f"{name}={text!r} is not a whole number of seconds") from None


def _serialize_sqlite_writers(engine) -> None:
    """Make SQLite safe for several worker processes.

    - WAL: readers (the dashboard) never block the writer; it persists in the file.
    - synchronous=NORMAL: in WAL mode a crash can lose the last commit, never corrupt the file;
      it saves an fsync per commit (a trial commits ~20 times).
    - BEGIN IMMEDIATE: Optuna reads a trial's state, then writes it (popping a WAITING trial,
      failing a stale one). pysqlite runs that read outside any transaction, so two workers
      could both pop the same trial; and a read transaction that later writes fails at once
      with "database is locked" when another process wrote in between (busy timeouts do not
      apply to that upgrade). Taking the write lock at BEGIN makes each transaction atomic
      and makes every waiter wait (up to SQLITE_BUSY_SECONDS) instead of failing.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna made its tables lack the hooks above


def artifact_dir(url: str) -> Path:
    """Where artifacts of this storage live: beside a local file, or OPTUNA_SEARCH_ARTIFACTS
    (default ./optuna-search-artifacts) for a server; on several machines use a shared folder."""
    if os.environ.get("OPTUNA_SEARCH_ARTIFACTS"):
        return Path(os.environ["OPTUNA_SEARCH_ARTIFACTS"])
    if _kind(url) in ("sqlite", "journal"):
        path = _local_path(url)
        return path.with_name(path.name + "-artifacts")
    return Path("optuna-search-artifacts")


def artifact_store(url: str) -> FileSystemArtifactStore:
    folder = artifact_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))
