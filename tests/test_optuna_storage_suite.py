"""Optuna's own storage test-suite (optuna.testing.pytest_storages.StorageTestCase, 59 tests)
on the storage optuna-search opens (storage.open_store: retries, heartbeat, idempotent
writes), on SQLite and on PostgreSQL: what we add lives beside Optuna's contracts, not in what
callers read (a trial's system attributes hold what callers set, nothing of ours)."""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from storage import open_store

from pg_server import pg_url  # noqa: F401  (a fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """A store on an empty database: a file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield open_store(f"sqlite:///{tmp_path / 'suite.db'}").optuna
        return
    import sqlalchemy
    server = request.getfixturevalue("pg_url")
    name = f"optuna_suite_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(_with_driver(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    store = open_store(_database(server, name))
    try:
        yield store.optuna
    finally:
        store.optuna.engine.dispose()
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def _database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _with_driver(url: str) -> str:
    from storage import sqlalchemy_url
    return sqlalchemy_url(url)


class TestOpenStore(StorageTestCase):
    """Every test of Optuna's suite, run on both storages by the fixture above."""
