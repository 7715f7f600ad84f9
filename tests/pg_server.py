"""The PostgreSQL server of OPTUNA_SEARCH_PG_URL: its URL, fresh studies on it, and stopping
and restarting it.

Without the URL such tests skip, except under CI=true, where they fail. Restarting needs the
local cluster serving the URL's port and the right to run pg_ctlcluster (root, as in CI); tests
that never stop the server also run against a remote one.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import optuna
import pytest

from storage import open_storage

from helpers import skip_or_fail


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("OPTUNA_SEARCH_PG_URL")
    if not url:
        skip_or_fail("no PostgreSQL server: OPTUNA_SEARCH_PG_URL is not set (see .ci/run)")
    return url


def pg_cluster(url: str) -> list[str]:
    """[version, name] of the local cluster serving `url` (found by its port)."""
    port = str(urlsplit(url).port or 5432)
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return [version, name]
    pytest.fail(f"no local PostgreSQL cluster on port {port}: cannot restart it")


# The URLs whose server a test stopped, or may have left stopped (a start or restart that
# failed): the only ones pg_ensure_running starts.
_maybe_stopped: set[str] = set()


def pg_ctl(url: str, action: str) -> float:
    """pg_ctlcluster VERSION NAME start|stop|restart (it waits); returns the seconds it took."""
    _maybe_stopped.add(url)
    started = time.monotonic()
    subprocess.run(["pg_ctlcluster", *pg_cluster(url), action], check=True, timeout=120,
                   capture_output=True)
    if action != "stop":
        _maybe_stopped.discard(url)
    return time.monotonic() - started


def pg_ensure_running(url: str) -> None:
    """After a test that stopped the server, whatever happened: start it (no error if up).
    Nothing to do where no test stopped it (perhaps a remote server)."""
    if url in _maybe_stopped:
        subprocess.run(["pg_ctlcluster", *pg_cluster(url), "start"], capture_output=True,
                       timeout=120)
        _maybe_stopped.discard(url)


@pytest.fixture
def pg_study(pg_url):
    """(storage, a fresh study) on the server; afterwards the server is running and the study
    gone."""
    store = open_storage(pg_url, heartbeat=True)
    name = f"pytest-storage-{uuid.uuid4().hex[:8]}"
    yield store, optuna.create_study(study_name=name, storage=store)
    pg_ensure_running(pg_url)
    optuna.delete_study(study_name=name, storage=open_storage(pg_url, heartbeat=False))


@pytest.fixture
def pg_study_name(pg_url, tmp_path, monkeypatch):
    """A fresh study name; artifacts in tmp_path, not the repository; afterwards the server
    running and the study gone."""
    monkeypatch.setenv("OPTUNA_SEARCH_ARTIFACTS", str(tmp_path / "artifacts"))
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    yield name
    pg_ensure_running(pg_url)
    try:
        optuna.delete_study(study_name=name, storage=open_storage(pg_url, heartbeat=False))
    except KeyError:  # the test never made it
        pass
