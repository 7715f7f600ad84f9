"""What went wrong with a storage, in one line: a fault that passes (retry it) or one that stays.

Transient (retried with backoff, see storage/resilient.py): the server restarting or shutting
down, a connection refused, reset or closed, a serialization failure or deadlock, SQLite's
"database is locked". Permanent (raised at once as StorageFailure): a full disk, a read-only
file system or database, permission denied, a corrupt file. Anything else (a missing study, a
finished trial, a bug) is no storage fault and is raised unchanged.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import optuna

TRANSIENT, PERMANENT = "transient", "permanent"
MIN_FREE_BYTES = 1 << 20  # less than 1 MiB free is a full disk for a study (~KBs per trial)

# SQLite's primary result codes (Python 3.11 gives the name on every sqlite3.Error).
_SQLITE = {
    "SQLITE_BUSY": (TRANSIENT, "database is locked"),
    "SQLITE_LOCKED": (TRANSIENT, "database is locked"),
    "SQLITE_FULL": (PERMANENT, "the disk is full"),
    "SQLITE_CORRUPT": (PERMANENT, "the file is corrupt"),
    "SQLITE_NOTADB": (PERMANENT, "the file is corrupt (not an SQLite database)"),
    "SQLITE_PERM": (PERMANENT, "permission denied"),
    "SQLITE_AUTH": (PERMANENT, "permission denied"),
    # These three say little; _diagnose() looks at the file system for the real reason.
    "SQLITE_READONLY": (PERMANENT, None),
    "SQLITE_CANTOPEN": (PERMANENT, None),
    "SQLITE_IOERR": (PERMANENT, None),
}
# PostgreSQL SQLSTATE codes (an exact code, else its two-letter class).
_POSTGRES = {
    "08": (TRANSIENT, "connection lost"),
    "57P01": (TRANSIENT, "the server is shutting down"),
    "57P02": (TRANSIENT, "the server crashed"),
    "57P03": (TRANSIENT, "the server is starting up"),
    "40": (TRANSIENT, "serialization failure or deadlock"),
    "53300": (TRANSIENT, "too many connections"),
    "53200": (TRANSIENT, "the server is out of memory"),
    "53100": (PERMANENT, "the server's disk is full"),
    "25006": (PERMANENT, "the server is read-only (a standby?)"),
    "42501": (PERMANENT, "permission denied"),
    "58030": (PERMANENT, "the server's disk failed (I/O error)"),
    "XX001": (PERMANENT, "the server's data is corrupt"),
    "XX002": (PERMANENT, "the server's index is corrupt"),
}
_OS = {
    errno.ENOSPC: (PERMANENT, "the disk is full"),
    errno.EDQUOT: (PERMANENT, "the disk quota is exceeded"),
    errno.EROFS: (PERMANENT, "read-only file system"),
    errno.EACCES: (PERMANENT, "permission denied"),
    errno.EPERM: (PERMANENT, "permission denied"),
    errno.EIO: (PERMANENT, "disk I/O error"),
    errno.ECONNREFUSED: (TRANSIENT, "connection refused"),
    errno.ECONNRESET: (TRANSIENT, "connection reset"),
    errno.ECONNABORTED: (TRANSIENT, "connection aborted"),
    errno.EPIPE: (TRANSIENT, "connection closed"),
    errno.ETIMEDOUT: (TRANSIENT, "connection timed out"),
    errno.EHOSTUNREACH: (TRANSIENT, "host unreachable"),
    errno.ENETUNREACH: (TRANSIENT, "network unreachable"),
}


class StorageFault(optuna.exceptions.StorageInternalError):
    """The storage failed while a command ran (not bad input): one line, exit 1.

    A StorageInternalError, so code that already handles Optuna's storage errors handles it."""


class StorageUnavailable(StorageFault):
    """The storage did not answer (transient faults only) for longer than the patience."""


class StorageFailure(StorageFault):
    """The storage answered with a fault that waiting does not cure: full disk, read-only,
    permission denied, corrupt file. Raised at once."""


def classify(error: BaseException, path: Path | None = None) -> tuple[str, str] | None:
    """(TRANSIENT or PERMANENT, what is wrong) for a storage fault, None for anything else.

    `error` is what a storage call raised: Optuna's StorageInternalError, SQLAlchemy's
    DBAPIError, or a driver's error; the driver's error is found along the chain of causes.
    `path` is the SQLite file, for a closer look at vague SQLite codes."""
    import sqlalchemy.exc
    for cause in _causes(error):
        name = getattr(cause, "sqlite_errorname", None)
        if name:
            primary = "_".join(name.split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
            kind, what = _SQLITE.get(primary, (None, None))
            if kind is None:
                return None  # e.g. "no such table": not a fault of the storage itself
            return kind, what or _diagnose(path, str(cause))
        state = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
        if state:
            found = _POSTGRES.get(state) or _POSTGRES.get(state[:2])
            return (found[0], f"{found[1]} ({first_line(cause, 160)})") if found else None
        if type(cause).__module__.startswith("psycopg") and type(cause).__name__ in (
                "OperationalError", "InterfaceError"):
            # No SQLSTATE: the driver lost or could not make the connection.
            return TRANSIENT, first_line(cause, 160)
        if isinstance(cause, OSError) and cause.errno in _OS:
            return _OS[cause.errno]
        if isinstance(cause, (sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)):
            return TRANSIENT, first_line(cause, 160)
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return TRANSIENT, "connection lost"
    return None


def _causes(error: BaseException):
    """error, then what caused it (SQLAlchemy's .orig first), without looping."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        orig = getattr(error, "orig", None)
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield orig
            seen.add(id(orig))
        yield error
        error = error.__cause__ or error.__context__


def _diagnose(path: Path | None, said: str) -> str:
    """Why an SQLite file cannot be opened or written, from the file system: SQLite's own
    words ("attempt to write a readonly database", "disk I/O error") do not say."""
    if path is not None and path.parent.exists():
        return folder_problem(path.parent, path) or said
    return said


def folder_problem(folder: Path, file: Path | None = None) -> str | None:
    """What keeps a study from being written in `folder` (an existing folder), and in `file`
    inside it if that exists: "read-only file system", "no space left for the study in
    FOLDER (N KiB free)" or "permission denied (PATH is not writable)"; None if nothing."""
    stats = os.statvfs(folder)
    if stats.f_flag & os.ST_RDONLY:
        return "read-only file system"
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        return f"no space left for the study in {folder} ({free // 1024} KiB free)"
    for item in (file, folder):
        if item is not None and item.exists() and not os.access(item, os.W_OK):
            return f"permission denied ({item} is not writable)"
    return None


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, at most `limit` characters (for one-line
    messages); the error's type name if the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__
