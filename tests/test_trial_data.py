"""reports/trial_data.py: a trial's data read back from where this version stores it (results
as user attributes, the rest as `optuna_search:` system attributes) and from the user
attributes that studies made before it hold, so an old study still reports."""
from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from reports.table import top_table
from reports.trial_data import (CAPTURE, CONFIG, CURVES, EPOCHS_RUN, FAIL_REASON, RUN, TIMING,
                                artifact_id, one_line, trial_config, trial_curves, trial_value)
from test_reports import record_settings

CURVE = {"train_loss": [2.0, 1.5], "val_acc": [0.3, 0.4], "train_seconds": [3.0, 1.0]}
CONFIGURED = {"batch_size": 64, "lr": 0.01, "optimizer": "adam", "epochs": 2}
TIMINGS = {"avg_train_seconds": 1.0, "avg_val_seconds": 0.1, "first_epoch_seconds": 3.0,
           "test_seconds": 0.2}
RUN_INFO = {"run": 2, "sampler_seed": 7, "host": "gpu1", "pid": 123}
RESULTS = {"max_val_acc": 0.4, "test_acc": 0.38, "test_loss": 1.7, "max_train_acc": 0.5,
           "best_epoch": 2, "parameters": 1000}


def trial(user_attrs: dict, system_attrs: dict | None = None, state=TrialState.COMPLETE):
    return create_trial(state=state, value=0.4 if state == TrialState.COMPLETE else None,
                        params={"optimizer": "adam"},
                        distributions={"optimizer": CategoricalDistribution(["adam", "sgd"])},
                        user_attrs=user_attrs, system_attrs=system_attrs or {})


def new_trial():
    """As this version records a finished trial (search/objective.py, search/run.py)."""
    return trial(RESULTS, {CURVES: CURVE, CONFIG: CONFIGURED, EPOCHS_RUN: 2, RUN: RUN_INFO,
                           TIMING: {**TIMINGS, "shared_by": 2}, CAPTURE: {"seconds": 1.5}})


def old_trial():
    """As versions before the move recorded it: everything a user attribute."""
    return trial({**RESULTS, "curves": CURVE, "config": CONFIGURED, "epochs_run": 2,
                  "run": RUN_INFO, **TIMINGS, "timing_shared_by": 2, "capture_seconds": 1.5,
                  "artifact:first_layer.npy": "old-id"})


def test_moved_values_read_the_same_from_a_new_and_an_old_trial():
    names = [*RESULTS, *TIMINGS, "timing_shared_by", "run", "epochs_run", "capture_seconds"]
    for made in (new_trial(), old_trial()):
        assert {n: trial_value(made, n) for n in names} == {
            **RESULTS, **TIMINGS, "timing_shared_by": 2, "run": RUN_INFO, "epochs_run": 2,
            "capture_seconds": 1.5}
        assert trial_curves(made) == CURVE and trial_config(made) == CONFIGURED


def test_a_value_recorded_nowhere_is_the_default():
    bare = trial({}, state=TrialState.PRUNED)
    assert trial_value(bare, "avg_train_seconds") is None
    assert trial_value(bare, "timing_shared_by", 1) == 1
    assert trial_value(bare, "capture_failure") is None
    assert trial_curves(bare) == {} and trial_config(bare) == {}
    # a concern's dict without the field: the default, not the dict
    partial = trial({}, {CAPTURE: {"failure": "no graphs"}})
    assert trial_value(partial, "capture_seconds") is None
    assert trial_value(partial, "capture_failure") == "no graphs"


def test_a_fail_reason_is_one_line_on_the_page_and_whole_for_the_reports():
    whole = "OutOfMemoryError: CUDA out of memory. " + "Tried to allocate 2.00 GiB. " * 10
    failed = trial({"fail_reason": one_line(whole)}, {FAIL_REASON: whole},
                   state=TrialState.FAIL)
    assert len(failed.user_attrs["fail_reason"]) == 100
    assert failed.user_attrs["fail_reason"].endswith("…")
    assert trial_value(failed, "fail_reason") == whole
    old = trial({"fail_reason": whole}, state=TrialState.FAIL)   # before the move
    assert trial_value(old, "fail_reason") == whole
    assert one_line("ValueError: bad\nTraceback ...") == "ValueError: bad"


def test_artifact_ids_come_from_optunas_own_record_or_an_old_user_attribute(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    picture = tmp_path / "first_layer.png"
    picture.write_bytes(b"png")
    running = study.ask()
    uploaded = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(picture),
                                                study_or_trial=running)
    study.tell(running, 0.5)
    (frozen,) = study.get_trials()
    assert frozen.user_attrs == {} and artifact_id(frozen, "first_layer.png") == uploaded
    assert artifact_id(frozen, "first_layer.npy") is None
    assert artifact_id(old_trial(), "first_layer.npy") == "old-id"


def test_an_old_study_and_a_new_one_make_the_same_table():
    tables = []
    for made in (new_trial(), old_trial()):
        study = optuna.create_study(direction="maximize")
        record_settings(study, "mlp")
        study.add_trial(made)
        tables.append(top_table(study))
    assert tables[0].equals(tables[1])
    assert tables[0].loc[0, "epochs run"] == 2 and tables[0].loc[0, "test acc"] == 0.38
