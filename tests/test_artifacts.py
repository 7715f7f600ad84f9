"""The artifact folder full, for real (a 1.2 MB tmpfs): one line naming the folder, the
trial FAIL (none RUNNING), exit 1, no partial file, the study's other trials intact
(storage/artifacts.py). Also the storage filling after an artifact was written: nothing of
it is left."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from helpers import TINY, integrity, load, run_cli
from storage import StorageFailure, open_storage
from storage.artifacts import ArtifactStore

FULL = "is full (No space left on device) while saving first_layer.npy for trial"


def search(db: Path, trials: int, hidden: int, **env):
    """optuna-search in a subprocess: (exit status, its stderr's lines)."""
    process = run_cli(["mlp", "--trials", str(trials), "--epochs", "1",
                       "--storage", f"sqlite:///{db}", *TINY, "--set", f"hidden_sizes={hidden}"],
                      **env)
    _, err = process.communicate(timeout=300)
    return process.returncode, err.strip().splitlines()


def fill(path: Path) -> None:
    """Write zeros to `path` until its disk is full, to the last byte."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1):   # big blocks, then the last bytes one at a time
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)


def assert_only_whole_artifacts(folder: Path, study: optuna.Study) -> int:
    """Every file in the folder is an artifact a trial records, and opens whole: no partial
    file, no orphan. Returns how many there are."""
    recorded = {json.loads(meta)["artifact_id"]: json.loads(meta)["filename"]
                for trial in study.get_trials() for key, meta in trial.system_attrs.items()
                if key.startswith("artifacts:")}   # Optuna's record of each artifact
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert files == set(recorded), (sorted(files), recorded)
    for artifact_id, filename in recorded.items():
        path = folder / artifact_id
        if filename.endswith(".npy"):
            assert np.load(path).shape[1] == 3 * 32 * 32   # the MLP's first layer, whole
        elif filename.endswith(".svg"):                    # a learning-curve picture
            assert ElementTree.parse(path).getroot().tag.endswith("svg")   # raises if cut
        else:
            with Image.open(path) as picture:
                picture.verify()                            # raises on a truncated PNG
    return len(recorded)


def test_a_full_artifact_folder_fails_the_trial_in_one_line_and_keeps_the_others(tmp_path,
                                                                                 tmpfs):
    # The folder of OPTUNA_SEARCH_ARTIFACTS on a disk of its own: trial 0's weight (768 KiB:
    # 64 x 3072 floats) and picture fit; trial 1's weight finds ~350 KiB free.
    folder, db = tmpfs("1200k"), tmp_path / "s.db"
    code, err = search(db, 2, 64, OPTUNA_SEARCH_ARTIFACTS=str(folder))
    assert code == 1 and len(err) == 1, err
    assert err[0] == f"optuna-search: error: artifacts folder {folder} {FULL} 1"
    study = load(db)
    kept, faulted = study.get_trials()
    assert kept.state == TrialState.COMPLETE and kept.value is not None   # intact
    assert faulted.state == TrialState.FAIL and FULL in faulted.user_attrs["fail_reason"]
    assert len(study.get_trials()) == 2                        # no retry queued: the disk's fault
    # trial 0's weight, its first-layer picture and its two learning-curve pictures (SVG)
    assert assert_only_whole_artifacts(folder, study) == 4
    assert integrity(db) == "ok"


def test_a_full_disk_shared_with_the_storage_leaves_room_to_fail_the_trial(tmpfs):
    # The case: the study file and its artifact folder on one 1.2 MB disk; the weight
    # (3 MiB: 256 x 3072 floats) fills it. Its partial file removed, the trial can be failed.
    disk = tmpfs("1200k")
    db, folder = disk / "s.db", disk / "s.db-artifacts"
    code, err = search(db, 3, 256)
    assert code == 1 and len(err) == 1, err
    assert err[0] == f"optuna-search: error: artifacts folder {folder} {FULL} 0"
    study = load(db)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]   # not left RUNNING
    assert assert_only_whole_artifacts(folder, study) == 0
    assert integrity(db) == "ok"


def test_a_storage_that_fills_after_the_artifact_is_written_keeps_no_artifact(tmp_path,
                                                                             tiny_disk):
    # The artifact goes to a roomy folder; the study file, on a full 200 KB disk, cannot
    # record it: the written file goes too, and the line names the storage.
    db = tiny_disk / "s.db"
    study = optuna.create_study(storage=open_storage(f"sqlite:///{db}", heartbeat=False))
    trial = study.ask()
    fill(tiny_disk / "filler")   # to the last byte: no write of the study file fits
    picture = tmp_path / "first_layer.npy"
    np.save(picture, np.zeros((16, 3072), dtype=np.float32))
    store = ArtifactStore(tmp_path / "artifacts")
    store.folder.mkdir()
    with pytest.raises(StorageFailure) as raised:
        store.upload(trial, picture)
    assert str(raised.value) == (f"storage {db}: the disk is full while saving "
                                 "first_layer.npy for trial 0")
    assert list(store.folder.iterdir()) == []
    (stored,) = study.get_trials()
    assert not any(key.startswith("artifacts:") for key in stored.system_attrs)


def test_a_full_temporary_folder_is_one_line_naming_it(tmp_path, tmpfs):
    # The weight and pictures are made in TMPDIR before they are uploaded: numpy's short
    # write there (no errno) is told as what it is, a full folder.
    temporary, db = tmpfs("400k"), tmp_path / "s.db"
    code, err = search(db, 2, 64, TMPDIR=str(temporary))
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"optuna-search: error: temporary folder {temporary} is full (")
    assert err[0].endswith("while saving the first-layer pictures of trial 0")
    study = load(db)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]
    assert assert_only_whole_artifacts(tmp_path / "s.db-artifacts", study) == 0
    assert integrity(db) == "ok"
