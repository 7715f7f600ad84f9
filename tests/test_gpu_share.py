"""search.train.gpu_share: each process's share of a GPU's memory when trials share it (which
fraction for which sharing), no cap off a GPU, and the run loop setting it from the run's
settings (--workers records device_shared_by; Ray's --gpus-per-trial: tests/test_ray_cluster.py).
A real out-of-memory error under a cap: bench/capture_checks.py (tests/test_capture.py, GPU)."""
from __future__ import annotations

import io

import pytest
import torch

import search.run
from search.train.gpu_share import CONTEXT_BYTES, MIN_FRACTION, cap_memory, memory_fraction
from search.run import run_process
from search.settings import RunSettings, StudySpec

H200 = 150_000_000_000     # bytes, about what torch reports for an H200 (139.8 GiB)
GIB = 1 << 30


def test_a_process_alone_on_its_gpu_gets_no_cap():
    assert memory_fraction(1, H200) is None
    assert memory_fraction(0, H200) is None


@pytest.mark.parametrize("shared_by", [2, 4, 8])
def test_sharers_split_what_their_contexts_leave(shared_by):
    fraction = memory_fraction(shared_by, H200)
    assert fraction == pytest.approx((H200 - shared_by * CONTEXT_BYTES) / shared_by / H200)
    # every share plus every context fits the GPU, and nearly all of it is handed out
    assert shared_by * (fraction * H200 + CONTEXT_BYTES) == pytest.approx(H200)
    assert fraction < 1 / shared_by


def test_four_trials_on_an_h200_get_about_34_gib_each():
    assert memory_fraction(4, H200) * H200 / GIB == pytest.approx(33.9, abs=0.1)


def test_a_small_gpu_with_many_sharers_still_gets_a_floor():
    assert memory_fraction(8, 16 * GIB) == pytest.approx(8 / 8 / 16)     # 1 GiB each
    assert memory_fraction(20, 16 * GIB) == MIN_FRACTION                  # contexts fill it


def test_no_cap_off_a_gpu_and_cuda_stays_untouched():
    assert cap_memory(torch.device("cpu"), 4) is None
    if not torch.cuda.is_available():
        assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("device, index", [("cuda", 1), ("cuda:0", 0)])
def test_the_cap_names_the_device_by_index(monkeypatch, device, index):
    """torch.cuda.set_per_process_memory_fraction rejects a device without an index (plain
    "cuda", what --device auto picks): the cap goes to the current device then (found on an
    H200, where every --workers child failed with a ValueError)."""
    calls = []
    props = type("Props", (), {"total_memory": H200})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: calls.append(("props", i)) or props)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, i: calls.append(("cap", i)))
    assert cap_memory(torch.device(device), 4) == pytest.approx(memory_fraction(4, H200))
    assert calls == [("props", index), ("cap", index)]
    assert all(isinstance(i, int) for _, i in calls)


@pytest.mark.parametrize("reserved_gib, capped, stops", [
    (0.1, True, False), (2.4, True, True), (2.4, False, False), (40.0, False, True)])
def test_memory_stuck_after_out_of_memory_stops_the_process_past_a_share(
        monkeypatch, reserved_gib, capped, stops):
    """Reserved memory holding no tensor after empty_cache (a failed capture's pool, seen on
    an H200) counts against the process's cap: past STUCK_SHARE of what it may use, stop."""
    import search.train.gpu_share as gpu_share
    props = type("Props", (), {"total_memory": H200})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, i: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: int((reserved_gib + 1) * GIB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: GIB)
    fraction = 2.6 * GIB / H200 if capped else 1.0   # 2.6 GiB: the capture check's cap
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda i: fraction)
    reason = gpu_share.stuck_memory(torch.device("cuda"))
    assert (reason is not None) == stops
    if stops:
        assert f"{reserved_gib:.1f} GiB" in reason
    assert gpu_share.stuck_memory(torch.device("cpu")) is None


def test_the_run_loop_caps_its_process_from_the_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(search.run, "cap_memory",
                        lambda device, shared_by: calls.append((device.type, shared_by)))
    spec = StudySpec(model="mlp", data="synthetic", epochs=1, train_subset=100,
                     test_subset=100, val_size=50, fixed={"hidden_sizes": (16,)},
                     sampler="random", pruner="none")
    settings = RunSettings(spec=spec, storage=f"sqlite:///{tmp_path}/s.db", trials=1,
                           device="cpu", device_shared_by=4)
    result = run_process(settings, io.StringIO())
    assert len(result.finished) == 1
    assert calls == [("cpu", 4)]
