"""Open the storage a URL names, after checking it, and find the artifact store beside it.

- sqlite:///path.db (the default, ./optuna-search.db): an RDBStorage in WAL mode with a busy
  timeout, so readers (the dashboard) and several writers wait instead of failing "locked";
- journal:///path.log (or a path ending in .log / .jsonl): Optuna's JournalStorage on a file,
  for several processes on one machine without a database;
- postgresql://user:pass@host/db: an RDBStorage for studies shared by many machines.
RDB storages run Optuna's heartbeat: a trial whose worker died is marked FAIL and retried
(RetryHeartbeatStaleTrialCallback) with its intermediate values.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.artifacts import FileSystemArtifactStore

DEFAULT_STORAGE = "sqlite:///optuna-search.db"
HEARTBEAT_SECONDS = int(os.environ.get("OPTUNA_SEARCH_HEARTBEAT", "30"))
GRACE_SECONDS = int(os.environ.get("OPTUNA_SEARCH_GRACE", "90"))
MAX_RETRY = 3
SQLITE_BUSY_SECONDS = 60
_SQLITE_MAGIC = b"SQLite format 3\x00"


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
    raise StorageError(f"storage URL {url!r} is not understood; use sqlite:///FILE.db, "
                       "journal:///FILE.log or postgresql://USER:PASSWORD@HOST/DB")


def _local_path(url: str) -> Path:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith("journal:///"):
        return Path(url[len("journal:///"):])
    return Path(url)


def check_url(url: str) -> str:
    """Check a URL without creating anything; return its kind. Raises StorageError."""
    kind = _kind(url)
    if kind in ("sqlite", "journal"):
        path = _local_path(url)
        if not str(path) or str(path) in (".", "/"):
            raise StorageError(f"storage URL {url!r} names no file")
        if not path.parent.resolve().is_dir():
            raise StorageError(f"storage folder {path.parent} does not exist")
        if kind == "sqlite" and path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as handle:
                if handle.read(16) != _SQLITE_MAGIC:
                    raise StorageError(f"{path} is not an SQLite file, so not an Optuna storage")
    if kind == "postgresql":
        parts = urlsplit(url)
        if not parts.hostname:
            raise StorageError(f"storage URL {url!r} names no host")
        try:  # a quick TCP check gives a clear message in seconds instead of a long hang
            with socket.create_connection((parts.hostname, parts.port or 5432), timeout=5):
                pass
        except OSError as error:
            raise StorageError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432} is not "
                               f"reachable ({error.strerror or error})") from None
    return kind


def open_storage(url: str = DEFAULT_STORAGE, heartbeat: bool = True):
    """The Optuna storage for `url` (checked first). Creates the SQLite/journal file."""
    kind = check_url(url)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(_local_path(url))))
    heartbeat_kwargs = {}
    if heartbeat:
        heartbeat_kwargs = dict(
            heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRY, inherit_intermediate_values=True))
    if kind == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    else:
        engine_kwargs = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                             **heartbeat_kwargs)
    except Exception as error:
        raise StorageError(f"could not open storage {url!r}: "
                           f"{str(error).splitlines()[0][:200]}") from None
    if kind == "sqlite":
        _use_wal(storage)
    return storage


def _use_wal(storage) -> None:
    """WAL lets readers (the dashboard) read while a worker writes; it persists in the file."""
    from sqlalchemy import event, text
    engine = storage.engine
    with engine.connect() as connection:
        connection.execute(text("PRAGMA journal_mode=WAL"))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")


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
