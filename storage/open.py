"""Open the storage a URL names, after checking it, and find the artifact store beside it.

- sqlite:///path.db (the default, ./optuna-search.db): an RDBStorage in WAL mode whose writers
  start every transaction with BEGIN IMMEDIATE and wait up to a minute for the write lock, so
  several worker processes never fail "database is locked" and never take the same trial
  (storage/sqlite.py);
- journal:///path.log (or a path ending in .log / .jsonl): Optuna's JournalStorage on a file,
  for several processes on one machine without a database;
- postgresql://user:pass@host/db: an RDBStorage for studies shared by many machines.
RDB storages ride out outages of their database (storage/resilient.py) and run Optuna's
heartbeat: a trial whose worker died is marked FAIL and retried with its intermediate values
(storage/retries.py).
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

from storage.artifacts import ArtifactStore
from storage.faults import (PERMANENT, StorageFailure, StorageFault, classify, first_line,
                            folder_problem)
from storage.resilient import ResilientStorage
from storage.retries import retry_callback
from storage.sqlite import SQLiteSettings

DEFAULT_STORAGE = "sqlite:///optuna-search.db"
# A running trial writes a heartbeat every HEARTBEAT seconds; one silent for GRACE seconds is
# taken for dead (FAIL) and retried. Read at each open, so tests and spawned workers can
# shorten them through the environment.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 90
SQLITE_BUSY_SECONDS = 60      # how long a writer waits for the lock before giving up
PG_CONNECT_SECONDS = 5
DEFAULT_PATIENCE_SECONDS = 120.0  # how long a call waits out an outage of the storage
_OPTUNA_TABLES = {"studies", "trials", "version_info"}


class StorageError(ValueError):
    """The storage URL is malformed, unreachable, or names something that is not a storage."""


def storage_kind(url: str) -> str:
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
    kind = storage_kind(url)
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
    # Only through SQLite itself, never a plain open(): SQLite's locks are POSIX locks, which a
    # process drops on ALL its descriptors of a file when it closes any one of them. A process
    # that already holds a storage on this file (a worker opening its study again, the
    # dashboard beside a search) would lose its locks; another process closing its last
    # connection would then take itself for the last user and delete the WAL under it
    # ("disk I/O error"). SQLite defers closing a file whose locks other connections hold.
    _roll_back_a_killed_write(path)
    try:  # read-only: checking must not write (not even a journal) into someone else's file
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error):
            raise StorageError(f"{path} is not an SQLite file, so not an Optuna storage") \
                from None
        raise StorageError(f"{path} is not a readable SQLite file ({error})") from None
    # Only some of Optuna's tables is fine: another process may be making them right now.
    if tables and not tables & _OPTUNA_TABLES:
        shown = ", ".join(sorted(tables)[:5])
        raise StorageError(f"{path} is an SQLite file with other tables ({shown}), not an "
                           "Optuna storage; name another file with --storage")


def _roll_back_a_killed_write(path: Path) -> None:
    """A process killed mid-write (making a new file's tables, before WAL mode is set) leaves
    a hot journal, X.db-journal: the file is not consistent until SQLite rolls it back, which
    only a read-write connection does (a read-only one fails "attempt to write a readonly
    database", for good). So open it read-write once, through SQLite (never a plain open():
    see below), and read. A journal of a live writer is not hot: the read waits for it."""
    journal = path.with_name(path.name + "-journal")
    if not journal.is_file() or journal.stat().st_size == 0:
        return
    try:
        connection = sqlite3.connect(f"file:{path.resolve()}?mode=rw", uri=True,
                                     timeout=SQLITE_BUSY_SECONDS)
        try:
            connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise StorageError(f"{path} has a write left unfinished by a killed process "
                           f"({journal.name}), which only a process that may write there can "
                           f"undo ({error}); run the command once where it may") from None


def open_storage(url: str = DEFAULT_STORAGE, heartbeat: bool = True, readonly: bool = False,
                 patience: float = DEFAULT_PATIENCE_SECONDS):
    """The Optuna storage for `url` (checked first). Creates the SQLite/journal file, unless
    readonly.

    An SQL storage is a ResilientStorage (storage/resilient.py): each call rides out an outage
    of up to `patience` seconds, then raises StorageUnavailable; a full disk, read-only file
    system, denied permission or corrupt file raises StorageFailure at once.
    readonly: for commands that only look (dashboard, report, studies): a missing file is an
    error (a typo must not make an empty database), SQLite readers take no write lock, and
    there is no heartbeat (a reader never fails another process's trials)."""
    kind = check_url(url, must_exist=readonly)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(_local_path(url))))
    heartbeat_kwargs = {}
    if heartbeat and not readonly:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                                message=".*(RetryHeartbeatStaleTrialCallback|heartbeat)")
        heartbeat_kwargs = dict(
            heartbeat_interval=_env_seconds("OPTUNA_SEARCH_HEARTBEAT", HEARTBEAT_SECONDS),
            grace_period=_env_seconds("OPTUNA_SEARCH_GRACE", GRACE_SECONDS),
            heartbeat_stale_trial_callback=retry_callback())
    sqlite, path = None, None
    if kind == "sqlite":
        path = _local_path(url).resolve()
        sqlite = SQLiteSettings(path, readonly=readonly, busy_seconds=SQLITE_BUSY_SECONDS)
        connect_args = {"timeout": SQLITE_BUSY_SECONDS}
    else:
        # TCP keepalives: a connection whose server vanished without closing it (a machine
        # lost, a network cut) is found dead in ~25 s instead of TCP's ~15 minutes.
        connect_args = {"connect_timeout": PG_CONNECT_SECONDS, "keepalives": 1,
                        "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
    try:
        return ResilientStorage(
            sqlalchemy_url(url), name=str(path) if path else redact(url), patience=patience,
            sqlite=sqlite, engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True},
            **heartbeat_kwargs)
    except StorageFault:
        raise
    except Exception as error:
        fault = classify(error, path)
        if fault is not None and fault[0] == PERMANENT:
            raise StorageFailure(f"storage {path or redact(url)}: {fault[1]}") from error
        raise StorageError(f"could not open storage {redact(url)!r}: "
                           f"{redact(first_line(error))}") from None


def check_writable(url: str) -> None:
    """Before the first trial: the storage file's folder and the artifact folder can be written
    and have room. Raises StorageError (exit 2); creates nothing.

    A PostgreSQL server's disk is the server's business: only the artifact folder is checked."""
    places = [("artifact folder", artifact_dir(url), None)]
    if storage_kind(url) in ("sqlite", "journal"):
        path = _local_path(url)
        places.insert(0, ("storage", path, path))
    for what, named, file in places:
        folder = (named.parent if file else Path(named)).resolve()
        while not folder.exists():  # a folder made later is made in its nearest parent
            folder = folder.parent
        problem = folder_problem(folder, file)
        if problem:
            raise StorageError(f"{what} {named}: {problem}")


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


def artifact_dir(url: str) -> Path:
    """Where artifacts of this storage live: beside a local file, or OPTUNA_SEARCH_ARTIFACTS
    (default ./optuna-search-artifacts) for a server; on several machines use a shared folder."""
    if os.environ.get("OPTUNA_SEARCH_ARTIFACTS"):
        return Path(os.environ["OPTUNA_SEARCH_ARTIFACTS"])
    if storage_kind(url) in ("sqlite", "journal"):
        path = _local_path(url)
        return path.with_name(path.name + "-artifacts")
    return Path("optuna-search-artifacts")


def artifact_store(url: str) -> ArtifactStore:
    folder = artifact_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    return ArtifactStore(folder)
