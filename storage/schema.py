"""One maker at a time of a new storage's tables.

Opening an RDB storage makes any missing table and stamps the schema's version. Several
processes opening a new storage at once (an array of Slurm tasks, a Job's pods, N workers on a
new file) race: all but one fail ("table studies already exists", "type studydirection already
exists"). So each open holds a lock meanwhile: an OS lock on the SQLite file's folder, or a
PostgreSQL advisory lock. Both go with the process (or its connection) if it dies.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Iterator


def advisory_key(name: str) -> int:
    """A signed 64-bit key (PostgreSQL's bigint) for a name."""
    digest = hashlib.sha256(b"optuna-search:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


SCHEMA_KEY = advisory_key("schema")


@contextlib.contextmanager
def schema_lock(path: Path | None) -> Iterator[None]:
    """Hold an OS lock on the file's folder while Optuna opens the file.

    Opening makes any missing table and stamps the schema version; two processes doing that at
    once on a new file crash ("table studies already exists", "UNIQUE constraint failed:
    alembic_version"). The lock is on the folder, not the file: SQLite's own locks on the file
    are POSIX locks, which this process would drop by closing any other descriptor of it.
    Nothing is created. Where the folder cannot be opened (no read permission) there is no lock.
    """
    if path is None:
        yield
        return
    try:
        folder = os.open(Path(path).resolve().parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing releases the lock


@contextlib.contextmanager
def server_schema_lock(url: str, engine_kwargs: dict | None) -> Iterator[None]:
    """For a PostgreSQL URL, a session-level advisory lock held while Optuna makes (or checks)
    the database's tables; for anything else, nothing."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=(engine_kwargs or {}).get("connect_args", {}))
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"),
                               {"key": SCHEMA_KEY})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": SCHEMA_KEY})
    finally:
        engine.dispose()
