"""One trial's training state on disk, saved off the training loop's critical path.

The caller builds a `Checkpoint(path, every_seconds, identity)` per trial and hands it to
`search.train.trainer.train`, which asks `due()` between steps and calls
`save(state, best_epoch, best_state)`:
- the tensors are copied into host buffers that are reused from save to save (pinned memory
  and non-blocking copies from a GPU, plain copies on the CPU), and a background thread waits
  for the copies and writes them with torch.save to `<path>.partial`, then renames it onto
  `path` (atomic: a kill leaves the previous save or none, never half a file);
- one write at a time: a save that comes due while the previous write is still running is
  skipped (every_seconds > 0: the loop never waits on the disk) or waits for it (every_seconds
  == 0, "after every epoch": each epoch must reach the disk);
- the best epoch's weights go to their own file, `<path>.best<epoch>`, written only when the
  best epoch changed; the main file names the one it belongs to;
- a failed write (full or read-only disk) leaves no .partial file, logs one warning and lets
  training go on (a checkpoint only saves time after a kill).
`resume()` returns the saved state when the file is readable and was written for the same
identity (the caller's dict plus the trainer's); otherwise it logs one warning, deletes the
file, and training starts over. Warnings go to the `logging` logger "search.train.checkpoint" (one
line on stderr when logging is not configured). `remove()` waits for a write in flight and
deletes every file; `close()` waits and frees the buffers. Neither leaves a thread behind.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from search.train.errors import first_line

log = logging.getLogger(__name__)
FORMAT = 1


def check_every_seconds(seconds: float) -> float:
    """The interval between saves, in seconds: 0 (after every epoch) or more."""
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"the checkpoint interval must be 0 (after every epoch) or a positive "
                         f"number of seconds, not {seconds}")
    return float(seconds)


class Checkpoint:
    def __init__(self, path: str | Path, every_seconds: float = 60.0,
                 identity: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.every_seconds = check_every_seconds(every_seconds)
        self.identity = _jsonable(identity or {})
        self._full_identity = self.identity
        self._last_save = time.monotonic()
        self._writer: threading.Thread | None = None
        self._buffers = _HostBuffers()
        self._best_buffers = _HostBuffers()
        self._best_on_disk: int | None = None   # epoch whose best file the main file names
        self._failure: BaseException | None = None
        self._warned = False

    # ------------------------------------------------------------ loading

    def resume(self, trainer_identity: Mapping[str, Any] | None = None) -> dict | None:
        """Start a run: the saved state if it belongs to this identity, else None.

        `trainer_identity` (the config, steps per epoch, device type...) joins the caller's
        identity; both must match. The clock for `every_seconds` starts here.
        """
        self.flush()
        self._full_identity = _jsonable({**self.identity, **(trainer_identity or {})})
        self._last_save = time.monotonic()
        if not self.path.exists():
            return None
        try:
            blob = _load(self.path)
            if not isinstance(blob, dict) or blob.get("format") != FORMAT:
                return self._discard("it was written by another version of the trainer")
            differences = _differences(blob["identity"], self._full_identity)
            if differences:
                return self._discard(f"it was written for another run (differs in "
                                     f"{', '.join(differences)})")
            state = blob["state"]
            if blob["best_epoch"] is not None:
                best = _load(self._best_path(blob["best_epoch"]))
                state["best_state"] = best["state"]
            self._best_on_disk = blob["best_epoch"]
            return state
        except Exception as error:  # truncated, not a checkpoint, or from an older format
            return self._discard(f"it is unreadable ({_why_unreadable(error)})")

    def _discard(self, why: str) -> None:
        log.warning("checkpoint %s discarded: %s; training starts from epoch 1",
                    self.path, why)
        self._delete_files()
        return None

    # ------------------------------------------------------------ saving

    def due(self, epoch_end: bool = False) -> bool:
        """Whether to save now: after every epoch when every_seconds is 0, else once
        every_seconds have passed since the last save (and no write is running)."""
        if self.every_seconds == 0:
            return epoch_end
        return (time.monotonic() - self._last_save >= self.every_seconds
                and not self._writing())

    def save(self, state: Mapping[str, Any], best_epoch: int | None = None,
             best_state: Mapping[str, torch.Tensor] | None = None) -> bool:
        """Copy `state` (and the best weights, when their epoch changed) and write them in the
        background. Returns False when skipped because a write is still running."""
        if self._writing():
            if self.every_seconds > 0:
                return False
            self.flush()
        self._report_failure()
        gpu = next((t.device for t in _tensors(state) if t.is_cuda), None)
        state = self._buffers.copy(state)
        best = None
        if best_epoch is not None and best_epoch != self._best_on_disk:
            best = {"epoch": best_epoch, "state": self._best_buffers.copy(best_state)}
        copied = None
        if gpu is not None:   # the writer waits for the copies, the training loop does not
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(gpu))
        blob = {"format": FORMAT, "identity": self._full_identity, "state": state,
                "best_epoch": best_epoch}
        self._last_save = time.monotonic()
        self._writer = threading.Thread(target=self._write, args=(blob, best, copied),
                                        name=f"checkpoint {self.path.name}")
        self._writer.start()   # not a daemon: a normal exit finishes the write first
        return True

    def _write(self, blob: dict, best: dict | None, copied) -> None:
        # Ctrl-C and SIGTERM are the main thread's: one landing here would cut a write
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGALRM})
        try:
            if copied is not None:
                copied.synchronize()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if best is not None:
                _atomic_save(best, self._best_path(best["epoch"]))
            _atomic_save(blob, self.path)
            self._best_on_disk = blob["best_epoch"]
            for stale in self._best_files():   # best files no main file names any more
                if stale != self._best_path(blob["best_epoch"]):
                    stale.unlink(missing_ok=True)
        except Exception as error:  # no space, read-only, gone: training goes on without
            self._failure = error

    # ------------------------------------------------------------ ending

    def flush(self) -> None:
        """Wait for the write in flight, if any (and warn once if a write failed)."""
        if self._writer is not None:
            try:
                self._writer.join()
            except RuntimeError:  # Ctrl-C interrupted its start(): it never ran, or it runs
                pass              # now and finishes by itself (not a daemon)
            self._writer = None
        self._report_failure()

    def close(self) -> None:
        """Wait for the write in flight and free the host buffers; the file stays."""
        self.flush()
        self._buffers, self._best_buffers = _HostBuffers(), _HostBuffers()

    def remove(self) -> None:
        """Wait for the write in flight, then delete every file of this checkpoint."""
        self.close()
        self._delete_files()

    def files(self) -> list[Path]:
        """Every file of this checkpoint now on disk (main, best, partial)."""
        parent = self.path.parent
        if not parent.is_dir():
            return []
        return sorted(p for p in parent.iterdir() if p.name == self.path.name
                      or p.name.startswith(self.path.name + "."))

    def _delete_files(self) -> None:
        for path in self.files():
            path.unlink(missing_ok=True)
        self._best_on_disk = None

    def _writing(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def _report_failure(self) -> None:
        if self._failure is not None and not self._warned:
            log.warning("checkpoint %s could not be written (%s: %s); training goes on "
                        "without it", self.path, type(self._failure).__name__,
                        first_line(self._failure))
            self._warned = True
        self._failure = None

    def _best_path(self, epoch: int) -> Path:
        return self.path.with_name(f"{self.path.name}.best{epoch}")

    def _best_files(self) -> list[Path]:
        return [p for p in self.files() if p.name.startswith(self.path.name + ".best")
                and not p.name.endswith(".partial")]


class _HostBuffers:
    """Host copies of the tensors of a nested dict/list state, in buffers reused from one save
    to the next (pinned for a GPU's tensors, so their copies do not block)."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []
        self.position = 0

    def copy(self, tree: Any) -> Any:
        self.position = 0
        return self._copy(tree)

    def _copy(self, tree: Any) -> Any:
        if isinstance(tree, torch.Tensor):
            i, self.position = self.position, self.position + 1
            if i == len(self.buffers):
                self.buffers.append(torch.empty(0))
            buffer = self.buffers[i]
            if buffer.shape != tree.shape or buffer.dtype != tree.dtype:
                buffer = self.buffers[i] = torch.empty(tree.shape, dtype=tree.dtype,
                                                       pin_memory=tree.is_cuda)
            return buffer.copy_(tree.detach(), non_blocking=tree.is_cuda)
        if isinstance(tree, dict):
            return {key: self._copy(value) for key, value in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(self._copy(value) for value in tree)
        return tree


def _atomic_save(blob: Any, path: Path) -> None:
    """torch.save to path.partial, then rename it onto path; no .partial outlives a failure.
    (No fsync: the faults handled are a killed process and a full disk, not a power cut.)"""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            recording = _RecordingFile(file)
            try:
                torch.save(blob, recording)
            except RuntimeError:
                if recording.error is None:
                    raise
                raise recording.error from None   # "No space left on device", not torch's
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class _RecordingFile:
    """A file that keeps the OSError of a failed write: torch.save reports a full disk only
    as "RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos 960 vs 854"."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def _tensors(tree: Any):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)



def _load(path: Path):
    """torch.load of tensors only, without PyTorch's multi-line warning about a foreign
    file's pickle protocol (the failure that follows is reported in one line of ours)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def _why_unreadable(error: Exception) -> str:
    """Our own words for why torch.load failed. PyTorch's own message for a file holding more
    than tensors is a paragraph advising weights_only=False, which would run the file's code:
    never for a file found on disk."""
    if isinstance(error, pickle.UnpicklingError):
        return "not a checkpoint of this trainer: it holds more than tensors"
    if isinstance(error, (EOFError, RuntimeError)):  # cut short, or its zip records damaged
        return f"truncated or damaged: {type(error).__name__}"
    if isinstance(error, (KeyError, TypeError)):
        return "not a checkpoint of this trainer"
    return f"{type(error).__name__}: {first_line(error, 120)}"


def _jsonable(values: Mapping[str, Any]) -> dict:
    """The identity as JSON would give it back (tuples become lists), so it compares equal
    after a round trip through the file."""
    return json.loads(json.dumps(dict(values), sort_keys=True))


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """The keys whose values differ, nested dicts by their dotted names ("config.lr")."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return [] if saved == current else [prefix.rstrip(".") or "everything"]
    return sorted(name for key in set(saved) | set(current)
                  for name in _differences(saved.get(key), current.get(key), f"{prefix}{key}."))
