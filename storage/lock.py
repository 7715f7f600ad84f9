"""One lock per study, held for the moments that decide what runs next.

Claiming a trial reads the study (how many trials are finished, running, queued) and then
writes (pops a queued trial or creates one). Two processes doing that at once could both see
"one trial left" and both start one. Optuna's storage calls are separate transactions, so the
whole decision is serialised by a lock that lives where the study lives:

- SQLite and journal files: an OS file lock (fcntl) on a file in the artifact folder beside the
  storage; such storages are on this machine's disk by definition.
- PostgreSQL: a transaction-level advisory lock (pg_advisory_xact_lock), so processes on every
  machine share it.

Either way a process that dies releases its lock at once (the OS closes the file, the server
ends the session): a SIGKILL never leaves a study locked.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path
from typing import Iterator

from storage.open import storage_kind, artifact_dir
from storage.schema import advisory_key

LOCK_FOLDER = ".locks"


@contextlib.contextmanager
def study_lock(storage, storage_url: str, study_name: str) -> Iterator[None]:
    """Hold the study's lock for the duration of the block (waits for it, no time-out)."""
    if storage_kind(storage_url) == "postgresql":
        with _advisory_lock(storage, study_name):
            yield
    else:
        with _file_lock(artifact_dir(storage_url) / LOCK_FOLDER / _file_name(study_name)):
            yield


def _file_name(study_name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.=-]", "_", study_name)[:80]
    digest = hashlib.sha256(study_name.encode()).hexdigest()[:8]  # two names, one safe form
    return f"{safe}-{digest}.lock"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)   # released when the file closes, or the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(storage, study_name: str) -> Iterator[None]:
    """A transaction of its own, open while the block runs; its end (or the connection's, if
    this process dies or the server restarts) releases the lock. Taking it rides out an outage
    like every other call of the storage (storage/resilient.py)."""
    import sqlalchemy

    def lock():
        connection = storage.engine.connect()
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": advisory_key("study:" + study_name)})
        except BaseException:
            connection.close()
            raise
        return connection

    retrying = getattr(storage, "retrying", lambda call: call())
    connection = retrying(lock)
    try:
        yield
    finally:
        try:
            connection.commit()  # releases the lock
            connection.close()
        except Exception:  # the server went away meanwhile, and took the lock with it
            connection.invalidate()

