"""Shared fixtures: every test in a folder of its own (never the checkout, where a user's
./optuna-search.db may be), where the real CIFAR-10 archive lives, a private cache folder, and
a tiny disk to fill."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import skip_or_fail
from search import interrupts

REPO = Path(__file__).resolve().parents[1]
CIFAR_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _storage_files_in_the_checkout() -> set[str]:
    return {path.name for pattern in ("*.db*", "*.log", "optuna-search-artifacts")
            for path in REPO.glob(pattern)}


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch, request):
    """Run each test in its own temporary folder, so a command without --storage writes its
    default ./optuna-search.db there; and fail a test that still leaves a storage file (or a
    -wal/-shm beside the user's) in the checkout's root."""
    before = _storage_files_in_the_checkout()
    monkeypatch.chdir(tmp_path)
    yield
    new = _storage_files_in_the_checkout() - before
    assert not new, f"{request.node.nodeid} wrote {sorted(new)} into the checkout {REPO}"


@pytest.fixture(autouse=True)
def _no_stop_left():
    """A test that noted a stop (a signal to this process, a handler called directly) leaves
    none for the next: the stop is a state of the process (search/interrupts.py)."""
    yield
    interrupts.forget_stops()


@pytest.fixture(autouse=True)
def _quiet_cache(monkeypatch, tmp_path_factory):
    """Keep decoded-image caches in the user's cache folder, never beside ../shared."""
    os.environ.setdefault("OPTUNA_SEARCH_CACHE",
                          str(Path.home() / ".cache" / "optuna-search"))
    yield


@pytest.fixture
def cifar_tarball() -> Path:
    if not CIFAR_TARBALL.exists():
        pytest.skip(f"{CIFAR_TARBALL} is not here")
    return CIFAR_TARBALL


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, name) -> a folder of `tmp_path` with a file system of `size` (tmpfs, e.g.
    "1200k") mounted on it, unmounted afterwards; skips where mount is not allowed (fails
    under CI=true: CI runs as root)."""
    mounted = []

    def mount(size: str, name: str = "tiny"):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            skip_or_fail(f"cannot mount a tmpfs here ({done.stderr.strip()}); CI runs as root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def tiny_disk(tmpfs):
    """A 200 KB file system (tmpfs). Smaller than what its users write: test_storage's
    ~400 KB of trial attributes and test_checkpoint's ~1.2 MB checkpoint of the small MLP;
    test_integrity fills it itself."""
    return tmpfs("200k")
