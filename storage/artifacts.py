"""The artifact folder: a trial's first-layer weight and pictures, each whole or absent.

Optuna's FileSystemArtifactStore writes an artifact straight to its final name, so a full
disk leaves a truncated file under an artifact id (1.2 MB tmpfs: a 672 KB piece of a 6 MB
weight, for good) and, when the study's SQLite file shares that disk, no room to mark the
trial FAIL. Here an artifact is written to `<id>.partial` and renamed onto its id once whole;
a failed write removes the partial file, which gives the disk its room back.

`upload()` is the one path for every fault while a trial's artifact is saved (the artifact's
write, or the storage's record of it, whichever fills the disk first): nothing it wrote is
left, and it raises StorageFailure with one line naming the folder, the artifact and the
trial. search/run.py then fails the trial (FAIL, not queued again: the disk, not the trial,
is at fault, as for a full SQLite disk) and the command exits 1.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore

from storage import faults
from storage.faults import StorageFailure, StorageFault

PARTIAL_SUFFIX = ".partial"   # an artifact being written; never an artifact id (a UUID)
_FULL = (errno.ENOSPC, errno.EDQUOT)


class ArtifactStore(FileSystemArtifactStore):
    """Optuna's store of files in `folder`, writing each artifact whole or not at all."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.folder = Path(folder)
        self.written: list[str] = []   # the ids this store wrote, for upload() to take back

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = self.folder / artifact_id
        partial = final.with_name(artifact_id + PARTIAL_SUFFIX)
        try:
            with open(partial, "wb") as file:
                shutil.copyfileobj(content_body, file)
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self.written.append(artifact_id)

    def upload(self, trial: optuna.Trial, path: Path) -> str:
        """Upload the file at `path` as an artifact of `trial` (Optuna's upload_artifact);
        its id. On any failure nothing of it stays in the folder; an OSError becomes one
        StorageFailure line naming the folder, and a storage fault keeps its kind; both say
        what was being saved, for which trial."""
        before = len(self.written)
        try:
            return optuna.artifacts.upload_artifact(artifact_store=self, file_path=str(path),
                                                    study_or_trial=trial)
        except BaseException as error:
            for artifact_id in self.written[before:]:   # written, but the storage lacks it
                (self.folder / artifact_id).unlink(missing_ok=True)
            saving = f"while saving {path.name} for trial {trial.number}"
            if isinstance(error, StorageFault):          # the study's storage: it says which
                raise type(error)(f"{error} {saving}") from None
            if isinstance(error, OSError):
                if error.filename and Path(error.filename) == path:   # reading the source
                    raise StorageFailure(f"cannot read {path}: {_why(error)} {saving}") from None
                raise StorageFailure(f"{folder_fault('artifacts', self.folder, error)} "
                                     f"{saving}") from None
            raise
        finally:
            del self.written[before:]   # recorded or removed: nothing more to take back


def folder_fault(what: str, folder: Path, error: OSError) -> str:
    """One line for a failed write in `folder`: "WHAT folder F is full (No space left on
    device)", or "WHAT folder F: <the system's words>" for any other fault."""
    # numpy's short write has no errno: then the folder's free space says whether it is full
    if error.errno in _FULL or (error.errno is None and _nearly_full(folder)):
        return f"{what} folder {folder} is full ({_why(error)})"
    return f"{what} folder {folder}: {_why(error)}"


def _nearly_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < faults.MIN_FREE_BYTES


def _why(error: OSError) -> str:
    return error.strerror or str(error)
