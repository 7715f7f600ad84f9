"""optuna-dashboard on a study storage and its artifact store, alone or beside a search.

    optuna-search dashboard                        # http://127.0.0.1:8080/dashboard, Ctrl-C stops
    optuna-search mlp --trials 20 --dashboard      # the same, for as long as the search runs

The dashboard reads the same storage as the search, as a reader (storage/sqlite.py: on SQLite
its reads take no write lock, so a slow page never stalls a trial's writes) and the same
artifact store, so each trial's first_layer.png shows on its trial page. While the database is
away (a PostgreSQL restart) a page waits up to DASHBOARD_PATIENCE_SECONDS, then fails with one
line on stderr; the next poll after the database is back answers again. The study's own
figures (reports/dashboard_figures.py) are served in the order of their ids.
optuna-dashboard has no login: anyone who reaches its port can read, edit and delete studies.
So it listens on loopback unless --host says otherwise, and then it warns.
"""
from __future__ import annotations

import json
import logging
import re
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Callable, Iterator, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from search.errors import DashboardError
from storage import (StorageError, StorageFault, check_url, open_store, redact,
                     sqlalchemy_url)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DASHBOARD_PATIENCE_SECONDS = 10.0  # how long a page waits for a database that is away


def dashboard_app(storage_url: str) -> Callable:
    """optuna-dashboard's WSGI app on `storage_url` and the artifact store beside it."""
    import optuna_dashboard
    logger = logging.getLogger("optuna_dashboard._bottle_util")  # where failed API calls go
    if not any(isinstance(f, _OneLineStorageFaults) for f in logger.filters):
        logger.addFilter(_OneLineStorageFaults())
    # A reader: refuses a missing file, no write lock on SQLite, no heartbeat (it never fails
    # another's trials).
    store = open_store(storage_url, readonly=True, patience=DASHBOARD_PATIENCE_SECONDS)
    app = optuna_dashboard.wsgi(store.optuna, artifact_store=store.artifacts())
    return _FiguresInOrder(app)


STUDY_DETAIL = re.compile(r"^/api/studies/\d+$")  # the page's poll for one study's trials


class _FiguresInOrder:
    """Serves a study's saved plotly figures sorted by id, leaving out emptied ones.

    optuna-dashboard 0.21 collects the ids in a set, so without this they arrive in a new
    order in every process; reports/dashboard_figures.py makes ids that sort in reading
    order and empties the figures it no longer saves (study attrs cannot be deleted).
    """

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ, start_response):
        if not STUDY_DETAIL.match(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        answer: dict = {}

        def keep(status, headers, exc_info=None):  # answer after the body is rewritten
            answer.update(status=status, headers=headers)

        result = self.app(environ, keep)
        try:
            body = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        status, headers = answer["status"], answer["headers"]
        if status.startswith("200"):
            detail = json.loads(body)
            detail["plotly_graph_objects"] = sorted(
                (g for g in detail.get("plotly_graph_objects", []) if g["graph_object"]),
                key=lambda g: g["id"])
            body = json.dumps(detail).encode()
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]


class _OneLineStorageFaults(logging.Filter):
    """optuna-dashboard logs a failed API call with its stack trace (and answers 500); a storage
    fault, the database being away, gets its one line instead. It logs inside its `except`."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = sys.exc_info()[1]
        if isinstance(error, StorageFault):
            record.msg, record.args = f"optuna-dashboard: {error}", ()
        return True


def storage_is_made(storage_url: str) -> bool:
    """Whether Optuna has finished making its tables there (it stamps alembic_version last).

    The dashboard beside a search waits for this instead of opening the storage at once:
    opening an RDB storage makes any missing table, and the search makes its storage only
    after it has checked its input (bad input must leave nothing written).
    """
    try:
        kind = check_url(storage_url, must_exist=True)
    except StorageError:  # no file yet, or an SQLite file with only some of Optuna's tables
        return False
    if kind == "journal":
        return True
    import sqlalchemy
    engine = sqlalchemy.create_engine(sqlalchemy_url(storage_url),
                                      poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            stamped = connection.execute(sqlalchemy.text("SELECT COUNT(*) FROM alembic_version"))
            return stamped.scalar() > 0
    except sqlalchemy.exc.SQLAlchemyError:  # no such table yet, or locked for a moment
        return False
    finally:
        engine.dispose()


WAITING_PAGE = (b"<!doctype html><meta http-equiv='refresh' content='2'><title>optuna-dashboard"
                b"</title><p>Waiting for the search to create its storage; this page reloads.")


class _AppWhenStorageIsMade:
    """Answers "wait" (503, reloading every 2 s) until the search has made its storage, then
    opens it: the search creates it only after its input has been checked."""

    def __init__(self, storage_url: str):
        self.storage_url = storage_url
        self._app: Callable | None = None
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            if self._app is None and storage_is_made(self.storage_url):
                self._app = dashboard_app(self.storage_url)
        if self._app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/html"),
                                                       ("Retry-After", "2")])
            return [WAITING_PAGE]
        return self._app(environ, start_response)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # the browser polls every few seconds: no log line
        pass


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a half-open browser connection must not keep the process alive

    def __init__(self, address: tuple, family: int):
        self.address_family = family
        super().__init__(address, _QuietHandler)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the browser closed a tab mid-response: nothing to report
        super().handle_error(request, client_address)


class DashboardServer:
    """A threaded WSGI server bound at construction, so a taken port fails before anything runs.

    Port 0 picks a free port; `url` tells which."""

    def __init__(self, app: Callable | None, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT):
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as error:
            raise DashboardError(f"host {host!r} is not known ({error.strerror})") from None
        try:
            self._server = _ThreadedServer((host, port), family)
        except OSError as error:
            raise DashboardError(f"cannot listen on {host}:{port} ({error.strerror}); "
                                 "pick another with --port") from None
        self._server.set_app(app)
        self.host = host
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def set_app(self, app: Callable) -> None:
        self._server.set_app(app)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)  # seconds between shutdown checks

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.serve_forever, name="optuna-dashboard",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()  # waits for serve_forever to return
            self._thread.join()
            self._thread = None
        self._server.server_close()


def exposure_warning(host: str) -> str | None:
    if host in LOOPBACK_HOSTS:
        return None
    return (f"warning: optuna-dashboard has no login; listening on {host} lets anyone who can "
            "reach this machine read, change and delete your studies")


def serve(storage_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          out: TextIO | None = None) -> int:
    """The `dashboard` command: serve until Ctrl-C (SIGINT) or SIGTERM, then return 0.

    Both signals are handled here, not left to Python's defaults: a process started with
    SIGINT ignored (nohup, a background job of a non-interactive shell) inherits that, and
    Python then never turns SIGINT into KeyboardInterrupt.
    """
    out = out or sys.stdout
    check_url(storage_url, must_exist=True)  # a missing file fails before the port is bound
    server = DashboardServer(None, host, port)  # bind first: a taken port opens nothing
    previous = {signum: signal.signal(signum, _raise_interrupt)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.set_app(dashboard_app(storage_url))
        warning = exposure_warning(host)
        if warning:
            print(warning, file=sys.stderr)
        print(f"optuna-dashboard on {server.url} for {redact(storage_url)}; Ctrl-C stops it",
              file=out, flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=out)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.stop()
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def dashboard_beside(storage_url: str, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                     out: TextIO | None = None) -> Iterator[DashboardServer]:
    """The dashboard in a thread of this process while the block (the search) runs."""
    out = out or sys.stdout
    server = DashboardServer(_AppWhenStorageIsMade(storage_url), host, port).start()
    print(f"optuna-dashboard on {server.url} while the search runs", file=out, flush=True)
    try:
        yield server
    finally:
        server.stop()
