"""TrialWriter: a trial's writes go on in the background while the storage is away (SQLite's
write lock held by another process, PostgreSQL restarted) and land in order, none lost or
doubled. PostgreSQL tests need OPTUNA_SEARCH_PG_URL and to restart its server (tests/pg_server.py).
"""
from __future__ import annotations

import threading
import time

import pytest
from optuna.trial import TrialState

from storage import StorageUnavailable, TrialWriter, open_storage

from pg_server import pg_ctl, pg_study, pg_url  # noqa: F401 (fixtures)
from helpers import integrity
from test_storage import new_trial, short_busy_timeout, write_lock_held  # noqa: F401


def test_the_writer_queues_during_an_outage_and_lands_everything_in_order(
        tmp_path, short_busy_timeout):
    db = tmp_path / "writer.db"
    store = open_storage(f"sqlite:///{db}", heartbeat=True)
    trial_id = new_trial(store)
    writer = TrialWriter(store, trial_id)
    with write_lock_held(db, 1.5):
        started = time.monotonic()
        for step in range(1, 51):
            writer.report(step, step / 100)
            writer.set_user_attr("curve", list(range(step)))
            writer.set_system_attr("optuna_search:curves", list(range(step)))  # off the page
        assert time.monotonic() - started < 0.5  # training did not wait for the storage
        assert writer.pending() > 1
    assert writer.flush(timeout=60)
    writer.close()
    trial = store.get_trial(trial_id)
    assert trial.intermediate_values == {step: step / 100 for step in range(1, 51)}
    assert trial.user_attrs["curve"] == list(range(50))
    assert trial.system_attrs["optuna_search:curves"] == list(range(50))
    assert store.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    assert integrity(db) == "ok"


def test_the_writer_keeps_what_it_could_not_write_and_says_why(tmp_path, short_busy_timeout):
    db = tmp_path / "writer.db"
    store = open_storage(f"sqlite:///{db}", heartbeat=False, patience=0.5)
    trial_id = new_trial(store)
    writer = TrialWriter(store, trial_id)
    with write_lock_held(db, 2.0):
        writer.report(1, 0.1)
        writer.report(2, 0.2)
        writer.set_user_attr("a", 1)
        writer.set_user_attr("a", 2)  # replaces the waiting write of "a"
        with pytest.raises(StorageUnavailable):
            writer.flush(timeout=30)
        assert writer.pending() == 3  # nothing lost: report 1, report 2, a=2
        with pytest.raises(StorageUnavailable):
            writer.report(3, 0.3)
    writer.close()
    assert store.get_trial(trial_id).intermediate_values == {}


# ------------------------------------------------------------------ PostgreSQL restarted

@pytest.mark.postgres
def test_a_restart_of_postgresql_loses_and_doubles_no_write(pg_url, pg_study):
    store, study = pg_study
    trial_id = study.ask()._trial_id
    writer = TrialWriter(store, trial_id)
    steps, stopping, most_pending = [0], threading.Event(), [0]

    def train():  # an epoch every 20 ms
        while not stopping.is_set():
            steps[0] += 1
            writer.report(steps[0], steps[0] / 1000)
            most_pending[0] = max(most_pending[0], writer.pending())
            time.sleep(0.02)
    trainer = threading.Thread(target=train)
    trainer.start()
    while steps[0] < 20:
        time.sleep(0.01)
    outage = pg_ctl(pg_url, "restart")
    before = steps[0]
    while steps[0] < before + 20:
        time.sleep(0.01)
    stopping.set()
    trainer.join()
    assert writer.flush(timeout=60)
    writer.close()
    assert outage > 0.5 and most_pending[0] > 5  # training went on while writes waited
    trial = store.get_trial(trial_id)
    assert sorted(trial.intermediate_values) == list(range(1, steps[0] + 1))
    assert all(value == step / 1000 for step, value in trial.intermediate_values.items())
    assert store.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    assert store.get_trial(trial_id).state == TrialState.COMPLETE
