"""Every reach into Optuna's private parts, in one place, each with why.

Optuna's public API has no way to
- name a trial or a study by the id its storage uses (`trial._trial_id`, `study._study_id`):
  a running trial's fresh reads, its writer and its heartbeat go straight to the storage;
- list the trials whose heartbeat went stale (fail_stale_trials fails them and queues their
  retries in separate writes: storage/retries.py needs the list to do it in safe steps), and
  those that never beat (Optuna never judges them): that takes the RDB storage's models;
- list a trial's artifacts from a FrozenTrial alone (get_all_artifact_meta needs the storage
  too): their records are trial system attributes under Optuna's ARTIFACTS_ATTR_PREFIX;
- read and write a study's system attributes (Study.system_attrs and set_system_attr are gone
  in Optuna 5), where optuna-dashboard keeps the figures we save for it;
- create a trial, or move a WAITING trial to RUNNING, together with a token in the same
  transaction (storage/resilient.py needs that to make a repeated call after a lost answer
  find what the first one did): that takes the RDB storage's models and sessions;
- quiet the RDB storage's own warning about a failed query, which carries the SQL text (the
  retry loop reports a lost connection itself: storage/notices.py): that takes the name of the
  logger of its private module.
When an Optuna release moves one of these, this module is what changes (pyproject.toml pins
the Optuna versions CI tests).
"""
from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import optuna
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState


OPTUNA_RDB_LOGGER = "optuna.storages._rdb.storage"  # its module's logger (optuna.logging)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def trial_artifact_ids(trial: FrozenTrial) -> dict[str, str]:
    """{filename: artifact id} of the artifacts uploaded to the trial (Optuna's records, as
    get_all_artifact_meta reads them; a trial uploads each name once)."""
    records = [json.loads(value) for key, value in trial.system_attrs.items()
               if key.startswith(ARTIFACTS_ATTR_PREFIX) and isinstance(value, str)]
    return {r["filename"]: r["artifact_id"] for r in records if "filename" in r}


def study_id(study: optuna.Study) -> int:
    return study._study_id


def stale_trial_ids(storage, study: optuna.Study) -> list[int]:
    """The study's RUNNING trials taken for dead, which storage/retries.py fails in its own
    steps: those whose heartbeat is older than the grace period (what
    optuna.storages.fail_stale_trials fails), and those that never beat and started longer
    than the grace period ago.

    Optuna never judges a trial without a heartbeat: one whose process died between claiming
    it and its first beat (search/claim.py) would stay RUNNING for ever, and every launcher
    wait on it. A live process never leaves such a trial for anyone to see: it claims and beats
    under the study's lock, which whoever judges holds too."""
    silent = storage._get_stale_trial_ids(study._study_id)
    retrying = getattr(storage, "retrying", lambda call: call())   # rides out an outage
    return silent + retrying(lambda: _never_beat(storage, study._study_id))


def _never_beat(storage, study: int) -> list[int]:
    """RUNNING trials of `study` without a heartbeat row, started over the grace period ago."""
    grace = storage.grace_period or 2 * storage.heartbeat_interval   # Optuna's default
    # Optuna stores the start as the claimer's naive local datetime.now(); it is compared with
    # this process's clock, never the database's (SQLite's now() is UTC, a server's its own).
    started_before = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    with _create_scoped_session(storage.scoped_session) as session:
        rows = (session.query(models.TrialModel)
                .outerjoin(models.TrialHeartbeatModel)
                .filter(models.TrialModel.study_id == study,
                        models.TrialModel.state == TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                .all())
        return [row.trial_id for row in rows
                if row.datetime_start is not None and row.datetime_start < started_before]


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


# ------------------------------------------------------------------ RDB storage transactions

def claim_waiting(storage, trial: int, key: str, token: str) -> bool:
    """WAITING -> RUNNING with `token` under the system attribute `key`, in one transaction;
    True if the trial is ours (now, or by an earlier attempt whose answer was lost)."""
    with _create_scoped_session(storage.scoped_session) as session:
        row = models.TrialModel.find_or_raise_by_id(trial, session, for_update=True)
        storage.check_trial_is_updatable(trial, row.state)
        if row.state != TrialState.WAITING:  # taken: by us, if our answer was lost
            claim = models.TrialSystemAttributeModel.find_by_trial_and_key(row, key, session)
            return claim is not None and json.loads(claim.value_json) == token
        row.state = TrialState.RUNNING
        row.datetime_start = datetime.datetime.now()
        storage._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel,
                                               trial, key, token)
    return True


def create_trial(storage, study: int, template: FrozenTrial) -> FrozenTrial:
    """Optuna's trial creation from `template` in one transaction, numbered under the study
    row's lock as Optuna does (without its own five quick retries)."""
    with _create_scoped_session(storage.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study, session, for_update=True)
        row = storage._get_prepared_new_trial(study, template, session)
        session.flush()
        frozen = copy.deepcopy(template)
        frozen.number, frozen._trial_id = row.number, row.trial_id
        frozen.datetime_start = row.datetime_start
    return frozen


def trial_made_by(storage, study: int, key: str, token: str) -> FrozenTrial | None:
    """The study's trial whose system attribute `key` holds `token`, if any."""
    with _create_scoped_session(storage.scoped_session) as session:
        row = (session.query(models.TrialModel)
               .join(models.TrialSystemAttributeModel)
               .filter(models.TrialModel.study_id == study,
                       models.TrialSystemAttributeModel.key == key,
                       models.TrialSystemAttributeModel.value_json == json.dumps(token))
               .one_or_none())
        return None if row is None else storage._build_frozen_trial_from_trial_model(row)
