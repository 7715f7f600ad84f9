"""Shared fixtures: where the real CIFAR-10 archive lives, a private cache folder, and a
small synthetic data set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


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
