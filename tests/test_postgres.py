"""A study on a real PostgreSQL server, run from two "machines" at once: the search command with
2 workers makes the study, and `optuna-search worker` joins it with 2 more.

Needs OPTUNA_SEARCH_PG_URL (postgresql://USER:PASSWORD@HOST/DB; .ci/run starts a server on
loopback). Without it these tests skip, except under CI=true, where they fail.
"""
from __future__ import annotations

import re
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main
from storage import open_storage

from helpers import TINY, run_cli
from pg_server import pg_study_name, pg_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.postgres


def wait_for_study(url: str, name: str, seconds: float = 90) -> None:
    storage = open_storage(url, heartbeat=False)
    deadline = time.monotonic() + seconds
    while name not in optuna.get_all_study_names(storage=storage):
        assert time.monotonic() < deadline, f"study {name} never appeared"
        time.sleep(0.2)


def test_four_workers_on_two_machines_share_one_postgresql_study(pg_url, pg_study_name, capsys):
    # "Machine" A: the search command makes the study (target 40) and runs 2 workers.
    first = run_cli(["mlp", "--workers", "2", "--trials", "40", "--epochs", "1",
                     "--storage", pg_url, "--study", pg_study_name, *TINY])
    wait_for_study(pg_url, pg_study_name)
    # "Machine" B joins while A runs: model, space, --set values, data and the target come
    # from the study; the four workers share the 40 trials between them.
    assert main(["worker", pg_study_name, "--storage", pg_url, "--workers", "2"]) == 0
    out_b = capsys.readouterr().out
    out_a, err_a = first.communicate(timeout=300)
    assert first.returncode == 0, err_a

    trials = optuna.load_study(study_name=pg_study_name,
                               storage=open_storage(pg_url, heartbeat=False)).get_trials()
    assert len(trials) == 40
    assert sorted(t.number for t in trials) == list(range(40))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.user_attrs["config"]["hidden_sizes"] == [16] for t in trials)
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
