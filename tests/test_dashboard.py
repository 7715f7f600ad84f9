"""The dashboard: the `dashboard` command, --dashboard beside a search, and a search that goes on
unharmed while the dashboard's API is polled on the same SQLite file."""
from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import optuna
import plotly.graph_objects as go
import pytest
from optuna.trial import TrialState

import search.dashboard
import search.objective
from search.cli import main
from reports.trial_data import artifact_id
from search.dashboard import DashboardServer, _AppWhenStorageIsMade, dashboard_app
from storage import open_storage

from helpers import free_port
from pg_server import pg_ctl, pg_ensure_running, pg_url  # noqa: F401 (a fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes, str]:
    """(status, body, content type); an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get_content_type()


def get_json(url: str):
    status, body, _ = get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> str:
    """A finished two-trial mlp study on synthetic data, with its first-layer pictures."""
    folder = tmp_path_factory.mktemp("dashboard-study")
    url = f"sqlite:///{folder / 'watched.db'}"
    argv = ["mlp", "--data", "synthetic", "--epochs", "1", "--trials", "2", "--pruner", "none",
            "--study", "watched", "--storage", url]
    assert main(argv) == 0
    return url


def test_dashboard_command_serves_study_and_pictures_until_ctrl_c(small_study):
    process = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", "--storage", small_study,
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline()
        assert "http://127.0.0.1:" in first_line, first_line + process.stderr.read()
        page = first_line.split()[2]                 # http://127.0.0.1:PORT/dashboard
        root = page.rsplit("/dashboard", 1)[0]
        port = int(root.rsplit(":", 1)[1])

        studies = get_json(root + "/api/studies")["study_summaries"]
        study_id = {s["study_name"]: s["study_id"] for s in studies}["watched"]
        detail = get_json(f"{root}/api/studies/{study_id}?after=0")
        assert len(detail["trials"]) == 2
        trial = detail["trials"][0]
        pictures = [a for a in trial["artifacts"] if a["filename"] == "first_layer.png"]
        assert len(pictures) == 1
        frozen = optuna.load_study(study_name="watched", storage=small_study).trials[0]
        assert pictures[0]["artifact_id"] == artifact_id(frozen, "first_layer.png")
        status, body, kind = get(f"{root}/artifacts/{study_id}/{trial['trial_id']}/"
                                 f"{pictures[0]['artifact_id']}")
        assert (status, kind, body[:8]) == (200, "image/png", PNG_MAGIC)
        status, body, kind = get(page)
        assert (status, kind) == (200, "text/html")
    finally:
        process.send_signal(signal.SIGINT)          # what Ctrl-C sends
        out, err = process.communicate(timeout=30)
    assert process.returncode in (0, 130), err
    assert "Traceback" not in err and "no login" not in err, err
    assert "dashboard stopped" in out
    assert not is_listening(port)


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_listening_beyond_loopback_warns_of_no_login(small_study, host, warned, monkeypatch,
                                                      capsys):
    def ctrl_c(self):  # stands in for a user pressing Ctrl-C as soon as it serves
        raise KeyboardInterrupt
    monkeypatch.setattr(DashboardServer, "serve_forever", ctrl_c)
    assert main(["dashboard", "--storage", small_study, "--host", host, "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert ("optuna-dashboard has no login" in err) == warned
    assert f"http://{host}:" in out and "dashboard stopped" in out


def test_bad_input_gets_one_line_and_exit_2_and_writes_nothing(tmp_path, small_study, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    missing = tmp_path / "missing.db"
    cases = {
        "mysql://somewhere/db": "is not understood",
        f"sqlite:///{missing}": "no storage at",
        f"sqlite:///{tmp_path / 'no-folder' / 'x.db'}": "does not exist",
    }
    try:
        for storage, message in cases.items():
            assert main(["dashboard", "--storage", storage, "--port", "0"]) == 2
            assert_one_error_line(capsys, message)
        assert main(["dashboard", "--storage", small_study, "--port", port]) == 2
        assert_one_error_line(capsys, f"cannot listen on 127.0.0.1:{port}")
        assert main(["dashboard", "--storage", small_study, "--port", "70000"]) == 2
        assert_one_error_line(capsys, "is not a port")
        # The search refuses a taken dashboard port before it creates its storage.
        fresh = tmp_path / "fresh.db"
        assert main(["mlp", "--data", "synthetic", "--epochs", "1", "--trials", "1",
                     "--storage", f"sqlite:///{fresh}", "--dashboard",
                     "--dashboard-port", port]) == 2
        assert_one_error_line(capsys, "cannot listen")
    finally:
        taken.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no database, no artifact folder


def assert_one_error_line(capsys, message: str) -> None:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optuna-search: error: "), err
    assert message in lines[0], lines[0]


def test_dashboard_beside_a_search_waits_for_the_search_to_make_its_storage(tmp_path):
    """Opening the storage first would race the search making its tables."""
    path = tmp_path / "later.db"
    server = DashboardServer(_AppWhenStorageIsMade(f"sqlite:///{path}"), port=0).start()
    try:
        root = server.url.rsplit("/dashboard", 1)[0]
        status, body, _ = get(server.url)
        assert status == 503 and b"Waiting for the search" in body
        assert not path.exists()
        search_storage = open_storage(f"sqlite:///{path}", heartbeat=False)
        optuna.create_study(study_name="made", storage=search_storage)
        studies = get_json(root + "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["made"]
    finally:
        server.stop()


class Poller(threading.Thread):
    """GET the dashboard's API every 0.2 s (what an open browser tab does, only faster)."""

    def __init__(self, root: str, study_name: str, stopping: threading.Event):
        super().__init__(daemon=True)
        self.root, self.study_name, self.stopping = root, study_name, stopping
        self.statuses: dict[str, list[int]] = {"studies": [], "detail": []}
        self.errors: list[str] = []
        self.states_seen: set[str] = set()
        self.last_answer: tuple[int, bytes] | None = None  # (status, body) for error messages

    def run(self) -> None:
        study_id, answered = None, False
        while not self.stopping.is_set():
            try:
                status, body, _ = get(self.root + "/api/studies")
                self.last_answer = (status, body[:300])
                if status == 503 and not answered:
                    time.sleep(0.2)  # the search has not made its storage yet: the page waits
                    continue
                answered = True
                self.statuses["studies"].append(status)
                ids = {s["study_name"]: s["study_id"]
                       for s in json.loads(body).get("study_summaries", [])}
                study_id = ids.get(self.study_name, study_id)
                if study_id is not None:
                    status, body, _ = get(f"{self.root}/api/studies/{study_id}?after=0")
                    self.statuses["detail"].append(status)
                    if status == 200:
                        self.states_seen |= {t["state"] for t in json.loads(body)["trials"]}
            except (urllib.error.URLError, ConnectionError) as error:
                # Refused before the server binds and while it stops: neither is a failure.
                if answered and not self.stopping.is_set():
                    self.errors.append(repr(error))
            except Exception as error:  # e.g. a body that is not JSON: report, keep polling
                self.errors.append(f"{error!r} after {self.last_answer!r}")
            time.sleep(0.2)


def test_search_with_dashboard_goes_on_while_its_api_is_polled(tmp_path, monkeypatch, capsys):
    port = free_port()
    storage = f"sqlite:///{tmp_path / 'polled.db'}"
    stopping = threading.Event()
    real_stop = DashboardServer.stop

    def stop(self):
        stopping.set()
        real_stop(self)
    monkeypatch.setattr(DashboardServer, "stop", stop)

    poller = Poller(f"http://127.0.0.1:{port}", "polled", stopping)
    real_train = search.objective.train

    def train_once_polled(*args, **kwargs):
        # Each trial (RUNNING by now) starts after two more reads of the page, however
        # fast the machine trains: the polls overlap every trial, a condition, not a speed.
        seen = len(poller.statuses["detail"])
        deadline = time.monotonic() + 60
        while len(poller.statuses["detail"]) < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return real_train(*args, **kwargs)
    monkeypatch.setattr(search.objective, "train", train_once_polled)
    poller.start()
    code = main(["mlp", "--data", "synthetic", "--epochs", "2", "--trials", "5",
                 "--pruner", "none", "--study", "polled", "--storage", storage,
                 "--dashboard", "--dashboard-port", str(port)])
    poller.join(timeout=15)
    out, err = capsys.readouterr()

    assert code == 0, err
    assert f"optuna-dashboard on http://127.0.0.1:{port}/dashboard" in out
    assert not is_listening(port)  # stopped with the search
    assert "database is locked" not in out + err
    trials = optuna.load_study(study_name="polled", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert not any("fail_reason" in t.user_attrs for t in trials)
    assert poller.errors == [], err[-4000:]
    assert len(poller.statuses["detail"]) >= 10, poller.statuses
    assert set(poller.statuses["studies"]) == {200}
    assert set(poller.statuses["detail"]) == {200}
    assert "Running" in poller.states_seen  # the polls really read while trials were written


@pytest.mark.parametrize("ending", ["returns 130", "raises KeyboardInterrupt"])
def test_dashboard_beside_a_search_stops_when_the_search_is_interrupted(tmp_path, monkeypatch,
                                                                        ending):
    """run_search answers Ctrl-C in optimize with 130; Ctrl-C while loading data propagates."""
    port = free_port()
    served_during_search = []

    def interrupted_search(settings):
        served_during_search.append(get(f"http://127.0.0.1:{port}/api/meta")[0])
        if ending == "raises KeyboardInterrupt":
            raise KeyboardInterrupt
        return 130
    monkeypatch.setattr("search.launch.run_search", interrupted_search)
    argv = ["mlp", "--data", "synthetic", "--storage", f"sqlite:///{tmp_path / 'x.db'}",
            "--dashboard", "--dashboard-port", str(port)]
    assert main(argv) == 130  # a KeyboardInterrupt outside optimize: main says so, 130
    assert served_during_search == [503]  # served, waiting for a storage never made
    assert not is_listening(port)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_the_dashboard_recovers_by_itself_after_a_database_outage(pg_url, tmp_path,
                                                                 monkeypatch, caplog):
    monkeypatch.setenv("OPTUNA_SEARCH_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(search.dashboard, "DASHBOARD_PATIENCE_SECONDS", 2.0)
    name = f"pytest-dashboard-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(pg_url, heartbeat=False))
    server = DashboardServer(search.dashboard.dashboard_app(pg_url), port=0).start()
    root = server.url.rsplit("/dashboard", 1)[0]
    try:
        assert get(root + "/api/studies")[0] == 200
        pg_ctl(pg_url, "stop")
        status, body, _ = get(root + "/api/studies")     # waits 2 s for the database, fails
        assert status == 500 and b"internal server error" in body
        pg_ctl(pg_url, "start")
        back = time.monotonic()
        while get(root + "/api/studies")[0] != 200:     # nothing restarted, nothing reopened
            # 20 s: room for a loaded 2-core CI machine (the server's start, a new connection)
            assert time.monotonic() - back < 20, "still failing 20 s after the database is back"
            time.sleep(0.1)
        studies = get_json(root + "/api/studies")["study_summaries"]
        assert name in [s["study_name"] for s in studies]
    finally:
        server.stop()
        pg_ensure_running(pg_url)
        optuna.delete_study(study_name=name, storage=open_storage(pg_url, heartbeat=False))
    failures = [r.getMessage() for r in caplog.records
                if r.name == "optuna_dashboard._bottle_util" and r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "\n" not in failures[0], failures  # one line, no traceback
    assert "unreachable for 2 s" in failures[0] and ":***@" in failures[0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_dashboard_stops_on_sigint_and_sigterm_even_started_with_sigint_ignored(small_study,
                                                                                signum):
    """nohup and the background jobs of a non-interactive shell start it with SIGINT ignored;
    Python then never raises KeyboardInterrupt unless the dashboard handles SIGINT itself."""
    process = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "dashboard", "--storage", small_study,
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        first_line = process.stdout.readline()             # printed once it serves
        assert "http://127.0.0.1:" in first_line, first_line + process.stderr.read()
        port = int(first_line.split()[2].rsplit(":", 1)[1].split("/")[0])
        assert is_listening(port)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:                         # never leave a server running
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "dashboard stopped" in out and "Traceback" not in err, err
    assert not is_listening(port)


def test_the_studys_figures_arrive_in_reading_order_without_emptied_ones(small_study):
    """optuna-dashboard 0.21 lists saved figures from a set: the server sorts them by id."""
    from optuna_dashboard import save_plotly_graph_object
    from reports.dashboard_figures import register_dashboard_figures
    study = optuna.load_study(study_name="watched", storage=small_study)
    for stale in ("optimization_history", "zz-old", "param_importances"):  # older versions'
        save_plotly_graph_object(study, go.Figure(), graph_object_id=stale)
    ids = register_dashboard_figures(study)                # empties the stale ones
    server = DashboardServer(dashboard_app(small_study), port=0).start()
    try:
        root = server.url.rsplit("/dashboard", 1)[0]
        for _ in range(3):  # every answer in the same order (a set's order changes by process)
            detail = get_json(f"{root}/api/studies/{study._study_id}?after=0")
            served = [g["id"] for g in detail["plotly_graph_objects"]]
            assert served == ids == ["01-curves_val_acc", "02-curves_train_acc",
                                     "03-curves_val_loss", "04-curves_train_loss",
                                     "05-anytime_epochs", "06-anytime_seconds"]
        status, body, kind = get(f"{root}/api/studies/{study._study_id + 99}")
        assert status == 404 and kind == "application/json"  # errors pass through untouched
    finally:
        server.stop()


def test_user_attributes_are_one_line_each_and_the_curves_live_elsewhere(small_study):
    """The trial page shows every user attribute as a row, in a box 6 rows high: a trial
    keeps its results there, one line each; the curves, config, timings, run and artifact
    ids are system attrs, which the page does not show, and the reports read them
    (reports/trial_data.py)."""
    from reports.trial_data import CURVES, RESULTS, TIMING, trial_config, trial_curves
    study = optuna.load_study(study_name="watched", storage=small_study)
    for trial in study.trials:
        assert set(trial.user_attrs) == set(RESULTS) and len(RESULTS) <= 6, trial.user_attrs
        for key, value in trial.user_attrs.items():
            assert len(json.dumps(value)) <= 80, (key, value)   # characters: one line
        assert "curves" not in trial.user_attrs and CURVES in trial.system_attrs
        assert TIMING in trial.system_attrs and artifact_id(trial, "first_layer.png")
        assert len(trial_curves(trial)["val_acc"]) == 1 and trial_config(trial)["epochs"] == 1
    server = DashboardServer(dashboard_app(small_study), port=0).start()
    try:   # what the trial page is sent: no curves among its user attributes
        root = server.url.rsplit("/dashboard", 1)[0]
        detail = get_json(f"{root}/api/studies/{study._study_id}?after=0")
        sent = [a["key"] for t in detail["trials"] for a in t["user_attrs"]]
        assert sent and "curves" not in sent and "config" not in sent and "run" not in sent
    finally:
        server.stop()


def test_a_running_search_saves_its_figures_for_the_dashboard_after_a_trial(tmp_path,
                                                                             monkeypatch):
    """Trial 1 starts with trial 0's curves already on the dashboard, not only at the end."""
    from storage.internals import study_system_attrs
    url = f"sqlite:///{tmp_path / 'live.db'}"
    seen = {}
    real_call = search.objective.Objective.__call__

    def look_then_run(self, trial):
        saved = [k for k, v in study_system_attrs(trial.study).items()
                 if k.startswith("dashboard:plot_data:01-curves_val_acc") and v]
        seen[trial.number] = bool(saved)
        return real_call(self, trial)

    monkeypatch.setattr(search.objective.Objective, "__call__", look_then_run)
    assert main(["mlp", "--data", "synthetic", "--epochs", "1", "--trials", "2",
                 "--pruner", "none", "--study", "live", "--storage", url]) == 0
    assert seen == {0: False, 1: True}


def test_live_figures_take_at_most_a_tenth_of_the_time(monkeypatch):
    import reports.dashboard_figures as dashboard_figures
    now = [0.0]

    def slow_save(study):  # each save costs 2 s
        now[0] += 2.0

    monkeypatch.setattr(dashboard_figures, "register_dashboard_figures", slow_save)
    live = dashboard_figures.LiveFigures(study=None, clock=lambda: now[0])
    for _ in range(100):       # a trial every 5 s
        now[0] += 5.0
        assert live.after_trial() is None
    assert 2.0 * live.saves <= 0.1 * now[0] + 2.0            # seconds saving <= 10% (+ one)
    assert live.saves >= 0.08 * now[0] / 2.0                 # and not much less: ~every 4th

    def broken_save(study):
        raise OSError("disk full")

    monkeypatch.setattr(dashboard_figures, "register_dashboard_figures", broken_save)
    now[0] += 1000.0
    assert "not saved (OSError: disk full); the search goes on" in live.after_trial()
    now[0] += 1000.0
    assert live.after_trial() is None                         # said once
