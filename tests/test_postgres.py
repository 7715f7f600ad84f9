"""A study on a real PostgreSQL server, run from two "machines" at once: the search command with
2 workers makes the study, and `optuna-search worker` joins it with 2 more. The test holds the
study's lock until all four wait to claim, so both machines take part however slowly each starts.

Needs OPTUNA_SEARCH_PG_URL (postgresql://USER:PASSWORD@HOST/DB; .ci/run makes a server of its
own on loopback). Without it these tests skip, except under CI=true, where they fail.
"""
from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from reports.trial_data import trial_config
from search.cli import main
from storage import open_storage, study_lock
from storage.schema import advisory_key

from helpers import TINY, children_of, run_cli, wait_until
from pg_server import pg_study_name, pg_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.postgres


def wait_for_study(url: str, name: str, seconds: float = 90) -> None:
    storage = open_storage(url, heartbeat=False)
    deadline = time.monotonic() + seconds
    while name not in optuna.get_all_study_names(storage=storage):
        assert time.monotonic() < deadline, f"study {name} never appeared"
        time.sleep(0.2)


def waiting_to_claim(storage, name: str) -> int:
    """Processes waiting for the study's lock (storage/lock.py: a PostgreSQL advisory lock on
    a 64-bit key, which pg_locks shows as its high and low 32 bits)."""
    key = advisory_key("study:" + name) & (2 ** 64 - 1)
    with storage.engine.connect() as connection:
        return connection.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1"),
            {"high": key >> 32, "low": key & (2 ** 32 - 1)}).scalar()


def spawned_workers(pid: int) -> int:
    """The worker processes (multiprocessing's spawn) a search process has started."""
    count = 0
    for child in children_of(pid):
        with contextlib.suppress(FileNotFoundError):
            count += b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes()
    return count


def test_four_workers_on_two_machines_share_one_postgresql_study(pg_url, pg_study_name, capsys):
    # "Machine" A: the search command makes the study (target 40) and runs 2 workers.
    first = run_cli(["mlp", "--workers", "2", "--trials", "40", "--epochs", "3",
                     "--storage", pg_url, "--study", pg_study_name, *TINY])
    wait_for_study(pg_url, pg_study_name)
    # "Machine" B joins while A runs: model, space, --set values, data and the target come
    # from the study; the four workers share the 40 trials between them. B's workers take
    # seconds to start (torch, data) while A's run: A's trials have 3 epochs, so A cannot be
    # done by then, and once B's workers exist no trial is claimed until all four wait for the
    # study's lock (every worker claims under it, after each trial); then each gets it in turn.
    second = run_cli(["worker", pg_study_name, "--storage", pg_url, "--workers", "2"])
    wait_until(lambda: spawned_workers(second.pid) == 2, 120, "B's two worker processes")
    storage = open_storage(pg_url, heartbeat=False)
    with study_lock(storage, pg_url, pg_study_name):
        wait_until(lambda: waiting_to_claim(storage, pg_study_name) >= 4, 120,
                   "A's and B's workers all waiting for the study's lock")
    out_b, err_b = second.communicate(timeout=300)
    assert second.returncode == 0, err_b
    out_a, err_a = first.communicate(timeout=300)
    assert first.returncode == 0, err_a

    trials = optuna.load_study(study_name=pg_study_name,
                               storage=open_storage(pg_url, heartbeat=False)).get_trials()
    assert len(trials) == 40
    assert sorted(t.number for t in trials) == list(range(40))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(trial_config(t)["hidden_sizes"] == [16] for t in trials)
    lines = [len(re.findall(r"^\[w[01]\] trial +\d+ COMPLETE", out, re.MULTILINE))
             for out in (out_a, out_b)]
    assert sum(lines) == 40 and min(lines) > 0, lines  # both machines took part

    # The other commands work on the same storage.
    assert main(["studies", "--storage", pg_url]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if pg_study_name in line)
    assert re.search(r"\|\s*mlp\s*\|\s*40\s*\|", row)
    assert main(["report", pg_study_name, "--storage", pg_url, "--top", "3"]) == 0
    assert len(re.findall(r"^\|", capsys.readouterr().out, re.MULTILINE)) == 5  # head, rule, 3


def test_a_worker_refuses_a_study_that_is_not_there(pg_url, pg_study_name, capsys):
    assert main(["worker", pg_study_name, "--storage", pg_url]) == 2
    err = capsys.readouterr().err
    assert f"no study {pg_study_name!r}" in err and len(err.strip().splitlines()) == 1
