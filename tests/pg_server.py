"""The PostgreSQL server of OPTUNA_SEARCH_PG_URL: its URL, fresh studies on it, and stopping
and restarting it.

Without the URL such tests skip, except under CI=true, where they fail. .ci/run makes a server
of its own for the run (.ci/postgres) and points the URL at it. Stopping and restarting drive
the server the URL names, found by asking it where its data directory is: pg_ctl on that
directory, as its owner (a cluster made by initdb, as .ci/run's is); or pg_ctlcluster for a
Debian cluster (its configuration in /etc), when a developer points the URL at one. Either
needs this machine and the right to run them (root, or the server's owner); tests that never
stop the server also run against a remote one.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
import sqlalchemy

from storage import open_storage, sqlalchemy_url

from helpers import skip_or_fail


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("OPTUNA_SEARCH_PG_URL")
    if not url:
        skip_or_fail("no PostgreSQL server: OPTUNA_SEARCH_PG_URL is not set (see .ci/run)")
    return url


@dataclass(frozen=True)
class Server:
    """Where the server of a URL lives on this machine, noted while it runs."""
    data: Path        # its data directory
    config: Path      # the folder of its postgresql.conf: the data directory, or /etc/...
    bin: Path         # the folder of its programs (postgres, pg_ctl)


_servers: dict[str, Server] = {}


def pg_server(url: str) -> Server:
    """The server of `url`, asked once (while it runs) and remembered (to start it again)."""
    if url not in _servers:
        engine = sqlalchemy.create_engine(sqlalchemy_url(url))
        try:
            with engine.connect() as connection:
                data, config, backend = connection.execute(sqlalchemy.text(
                    "SELECT current_setting('data_directory'), current_setting('config_file'), "
                    "pg_backend_pid()")).one()
                # Read while the connection is open: its backend process exits with it (read
                # after, the link was gone now and then on a loaded machine).
                try:   # the program serving us is the server's own postgres
                    program = Path(os.readlink(f"/proc/{backend}/exe"))
                except OSError as error:
                    pytest.fail(f"the server of {urlsplit(url).netloc.split('@')[-1]} is not "
                                "one this process can drive (not on this machine, or not "
                                f"ours): {error}")
        finally:
            engine.dispose()
        data, config = Path(data), Path(config).parent
        _servers[url] = Server(data, config, program.parent)
    return _servers[url]


def pg_control(url: str, action: str) -> list[str]:
    """The command that does `action` (start, stop, restart; waiting until done) to the
    server of `url`: pg_ctl as the owner of its data directory (PostgreSQL refuses root), or
    pg_ctlcluster for a Debian cluster."""
    server = pg_server(url)
    if server.config != server.data:   # Debian's layout: the configuration in /etc
        version, name = server.config.parts[-2:]
        return ["pg_ctlcluster", version, name, action]
    owner = server.data.stat().st_uid
    as_owner = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--"] if owner != os.geteuid() \
        else []
    # -l: the server's output goes to a file, not to our pipe (which it would hold open)
    return [*as_owner, str(server.bin / "pg_ctl"), "-D", str(server.data), "-w",
            "-l", str(server.data / "server.log"), action]


# The URLs whose server a test stopped, or may have left stopped (a start or restart that
# failed): the only ones pg_ensure_running starts.
_maybe_stopped: set[str] = set()


def pg_ctl(url: str, action: str) -> float:
    """Start, stop or restart the server of `url` (it waits); returns the seconds it took."""
    command = pg_control(url, action)   # asked before anything stops it
    _maybe_stopped.add(url)
    started = time.monotonic()
    done = subprocess.run(command, timeout=120, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed: {(done.stderr or done.stdout).strip()}")
    if action != "stop":
        _maybe_stopped.discard(url)
    return time.monotonic() - started


def pg_ensure_running(url: str) -> None:
    """After a test that stopped the server, whatever happened: start it (no error if up).
    Nothing to do where no test stopped it (perhaps a remote server)."""
    if url in _maybe_stopped:
        subprocess.run(pg_control(url, "start"), capture_output=True, timeout=120)
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
