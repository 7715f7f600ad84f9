"""search.train.capture: when capture is wanted, the eager path on the CPU (auto and off the same,
bit for bit), a failing capture (caused: a CPU has no CUDA; and after a warm-up that changed
BatchNorm's statistics) warning once and training on eagerly, the captured step's own code
path (graphs replaced by the eager modules: the same numbers to the last bit), graphs freed
with the run, and the module importing without CUDA. On a machine with CUDA the checks of
bench/capture_checks.py run too (graphs against eager, BatchNorm, schedule, captures per trial,
fallback, out of memory under a cap)."""
from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

import search.train.capture
import search.train.trainer
from search.train.capture import Capture, wanted
from search.train.data import make_dataset
from search.train.models import build
from search.train.trainer import train
from spaces import Config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import capture_checks  # noqa: E402  (bench/ is not a package)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
LEARNED = ("train_loss", "train_acc", "val_loss", "val_acc")


@pytest.fixture(scope="module")
def synthetic():
    return make_dataset("synthetic", seed=0)


@pytest.fixture
def fp32(monkeypatch):
    """fp32 on any CPU, so 'the same numbers' means the same bits on every machine."""
    monkeypatch.setattr(search.train.trainer, "device_recipe",
                        lambda device: (torch.contiguous_format, None))


@pytest.fixture
def capture_on_the_cpu(monkeypatch):
    """Capture as if the CPU were a GPU: the capture is tried (and, without CUDA, fails)."""
    monkeypatch.setattr(search.train.trainer, "wanted", lambda setting, device: setting == "auto")


@pytest.fixture
def warnings_(caplog):
    caplog.set_level(logging.WARNING, logger="search.train.capture")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "search.train.capture"]


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return capture_checks.SmallNet()   # conv + BatchNorm: statistics a warm-up would change


def numbers(result) -> tuple:
    curves = result.curves()
    return tuple(tuple(curves[n]) for n in LEARNED) + (result.test_loss, result.test_acc)


CONFIG = Config(epochs=2, batch_size=128, optimizer="adamw", lr=2e-3)


# ---------------------------------------------------------------- when

def test_capture_is_wanted_on_cuda_only_and_never_when_off():
    assert wanted("auto", torch.device("cuda")) and wanted("auto", "cuda:1")
    assert not wanted("auto", torch.device("cpu")) and not wanted("off", "cuda")
    with pytest.raises(ValueError, match="sometimes"):
        wanted("sometimes", "cuda")


def test_the_capture_module_imports_and_trains_on_the_cpu_without_touching_cuda():
    code = ("import torch, search.train.capture, search.train.steps, search.train.trainer\n"
            "from search.train.data import make_dataset\n"
            "from search.train.models import build\n"
            "from spaces import Config\n"
            "config = Config(epochs=1, hidden_sizes=(16,))\n"
            "search.train.trainer.train(build('mlp', config), config, make_dataset('synthetic'))\n"
            "print(torch.cuda.is_initialized())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO),
                                            "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and done.stderr == ""


def test_auto_and_off_train_the_same_on_the_cpu(synthetic, warnings_):
    auto = train(small_net(), CONFIG, synthetic, seed=3, capture="auto")
    off = train(small_net(), CONFIG, synthetic, seed=3, capture="off")
    assert numbers(auto) == numbers(off)
    assert auto.capture_seconds is None and auto.capture_failure is None
    assert warnings_() == []


# ---------------------------------------------------------------- a capture that fails

def test_a_failing_capture_warns_once_and_the_trial_trains_eagerly(
        synthetic, fp32, capture_on_the_cpu, warnings_):
    """Caused, not mocked: on a machine without a GPU the real capture call fails."""
    tried = train(small_net(), CONFIG, synthetic, seed=3)
    eager = train(small_net(), CONFIG, synthetic, seed=3, capture="off")
    assert numbers(tried) == numbers(eager)
    lines = warnings_()
    assert len(lines) == 1 and "capture of the training step failed" in lines[0]
    assert "\n" not in lines[0] and "without CUDA graphs" in lines[0]
    assert tried.capture_failure and tried.capture_failure in lines[0]
    assert tried.capture_seconds is not None


def warm_up_then(outcome):
    """A stand-in for make_graphed_callables: the real warm-up's side effects (three training
    forwards and backwards: BatchNorm statistics and batch counts move), then `outcome`."""
    def graph_module(module, sample):
        for _ in range(3):
            loss, _ = module(*sample)
            torch.autograd.grad(loss, list(module.parameters()))
        return outcome(module)
    return graph_module


def out_of_memory(module):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_capture_failing_after_its_warm_up_leaves_no_trace(
        synthetic, fp32, capture_on_the_cpu, warnings_, monkeypatch):
    monkeypatch.setattr(search.train.capture, "_graph_module", warm_up_then(out_of_memory))
    tried, eager = small_net(), small_net()
    failed = train(tried, CONFIG, synthetic, seed=3)
    plain = train(eager, CONFIG, synthetic, seed=3, capture="off")
    assert numbers(failed) == numbers(plain)
    for name, value in eager.state_dict().items():   # BatchNorm statistics and counts too
        assert torch.equal(tried.state_dict()[name], value), name
    assert failed.capture_failure.startswith("OutOfMemoryError: CUDA out of memory")
    assert len(warnings_()) == 1


# ---------------------------------------------------------------- the captured code path

class EagerGraph:
    """A stand-in for a CUDA graph: replay() runs the captured function eagerly."""

    def __init__(self, forward):
        self.forward = forward

    def replay(self):
        self.forward()


def eager_graph(forward):
    for _ in range(search.train.capture.EVAL_WARMUP_STEPS):   # warm-up: adds to the sums
        forward()
    return EagerGraph(forward)


def test_the_captured_steps_code_gives_the_eager_numbers_to_the_last_bit(
        synthetic, fp32, capture_on_the_cpu, warnings_, monkeypatch):
    """Graphs replaced by the modules they would hold (after their warm-ups): the replay
    path (loss and count from the graphed module, optimizer outside, sums), the evaluation
    graphs per shape and the undoing of every warm-up must give the eager numbers."""
    captures = {"train": 0, "eval": 0}

    def count(kind, function):
        def counted(*args):
            captures[kind] += 1
            return function(*args)
        return counted

    monkeypatch.setattr(search.train.capture, "_graph_module",
                        count("train", warm_up_then(lambda module: module)))
    monkeypatch.setattr(search.train.capture, "_graph", count("eval", eager_graph))
    config = CONFIG.replace(epochs=3, schedule="onecycle")     # the schedule acts per step
    captured = train(small_net(), config, synthetic, seed=3)
    eager = train(small_net(), config, synthetic, seed=3, capture="off")
    assert numbers(captured) == numbers(eager)
    # Once per trial for training, once per evaluation shape (val 200, test 500 images).
    assert captures == {"train": 1, "eval": 2}
    assert captured.capture_seconds > 0 and captured.capture_failure is None
    assert warnings_() == []


def test_a_captured_run_keeps_no_model_alive(synthetic, capture_on_the_cpu, monkeypatch):
    """make_graphed_callables leaves a reference cycle (module -> forward -> module): the run
    breaks it, so the model and its graphs go without waiting for the garbage collector."""
    def graph_module(module, sample):
        module.forward = lambda *args: type(module).forward(module, *args)   # the cycle
        return module
    monkeypatch.setattr(search.train.capture, "_graph_module", graph_module)
    monkeypatch.setattr(search.train.capture, "_graph", eager_graph)
    gc.collect()
    gc.disable()
    try:
        model = small_net()
        alive = weakref.ref(model)
        train(model, Config(epochs=1, batch_size=256), synthetic)
        del model
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the capture would succeed here")
def test_a_failed_capture_turns_capture_off_for_the_rest_of_the_trial():
    capture = Capture(enabled=True)
    assert capture.eval_graph(lambda: None, []) is None      # no CUDA here: fails, once
    assert not capture.enabled and capture.failure and capture.seconds > 0
    assert Capture(enabled=False).train_graph(nn.Linear(2, 2), torch.zeros(1, 2),
                                              torch.zeros(1), None, 0.0) is None


def test_a_resnet18_trial_on_the_cpu_builds_no_graphs(monkeypatch):
    """The models of the search go through the same path; on the CPU nothing is captured."""
    monkeypatch.setattr(search.train.capture, "_graph_module",
                        lambda *args: pytest.fail("captured on the CPU"))
    data = make_dataset("synthetic", seed=0, train_subset=64, test_subset=32, val_size=32)
    config = Config(epochs=1, batch_size=32)
    result = train(build("resnet18", config), config, data, seed=0)
    assert result.capture_seconds is None and len(result.epochs) == 1


# ---------------------------------------------------------------- on a GPU

@CUDA
@pytest.mark.parametrize("check", ["check_matches_eager", "check_schedule",
                                   "check_captured_once", "check_fallback"])
def test_on_a_gpu(check):
    data = make_dataset("synthetic", seed=0).to("cuda")
    result = getattr(capture_checks, check)(data)
    assert result.passed, result.detail


@CUDA
def test_out_of_memory_under_a_cap_fails_that_trial_only_on_a_gpu():
    result = capture_checks.check_out_of_memory()
    assert result.passed, result.detail
