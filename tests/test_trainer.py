"""search.trainer: learning on synthetic data, determinism, divergence, early stop, the
best-epoch weights, resuming from a checkpoint, and the optimizer mapping."""
from __future__ import annotations

import pytest
import torch

from search.data import DeviceLoader, make_dataset
from search.models import build
from search.trainer import Diverged, evaluate, make_optimizer, train
from spaces import Config

CURVE_NAMES = {"train_loss", "train_acc", "val_loss", "val_acc", "train_seconds", "val_seconds"}
LEARNED = ("train_loss", "train_acc", "val_loss", "val_acc")   # curves without wall-clock times


@pytest.fixture(scope="module")
def synthetic():
    return make_dataset("synthetic", seed=0)


def fresh_mlp(seed: int = 0, config: Config = Config()):
    torch.manual_seed(seed)  # the caller owns the initialisation; train() seeds the data order
    return build("mlp", config)


def learned_curves(result) -> dict[str, list[float]]:
    curves = result.curves()
    return {name: curves[name] for name in LEARNED}


def test_loss_falls_and_accuracy_beats_chance(synthetic):
    result = train(fresh_mlp(), Config(epochs=3), synthetic, seed=0)
    curves = result.curves()
    assert set(curves) == CURVE_NAMES and all(len(v) == 3 for v in curves.values())
    assert [e.epoch for e in result.epochs] == [1, 2, 3]
    assert curves["train_loss"][-1] < curves["train_loss"][0]
    assert curves["val_loss"][-1] < curves["val_loss"][0]
    assert result.best_val_acc > 0.3 and result.test_acc > 0.3       # chance is 0.1
    assert all(s > 0 for s in curves["train_seconds"] + curves["val_seconds"])
    assert not result.stopped_early and result.test_seconds > 0
    assert result.best_epoch == 1 + curves["val_acc"].index(max(curves["val_acc"]))


def test_same_seed_gives_identical_curves_on_the_cpu(synthetic):
    config = Config(epochs=2, optimizer="momentum", lr=0.01)
    first = train(fresh_mlp(), config, synthetic, seed=5)
    second = train(fresh_mlp(), config, synthetic, seed=5)
    other = train(fresh_mlp(), config, synthetic, seed=6)
    assert learned_curves(first) == learned_curves(second)
    assert (first.test_loss, first.test_acc) == (second.test_loss, second.test_acc)
    assert learned_curves(first)["train_loss"] != learned_curves(other)["train_loss"]


def test_a_huge_learning_rate_raises_diverged_naming_the_epoch(synthetic):
    with pytest.raises(Diverged, match=r"loss became (nan|inf).* in epoch 1\b"):
        train(fresh_mlp(), Config(epochs=3, optimizer="sgd", lr=10.0), synthetic)


def test_on_epoch_returning_true_stops_the_run_without_testing(synthetic):
    seen = []

    def stop_after_first(result):
        seen.append(len(result.epochs))
        return True
    result = train(fresh_mlp(), Config(epochs=3), synthetic, on_epoch=stop_after_first)
    assert seen == [1] and len(result.epochs) == 1
    assert result.stopped_early
    assert result.test_acc is None and result.test_loss is None and result.test_seconds is None


def test_the_test_set_is_evaluated_with_the_best_validation_weights(synthetic):
    """Spoil the weights after epoch 2 so epoch 3 is worse: the test result must be the one of
    epoch 2's weights, and the returned model must hold them."""
    model = fresh_mlp()
    mean, std = synthetic.normalisation()
    test_loader = DeviceLoader(synthetic.test, mean, std, 1024, train=False)
    test_acc_by_epoch = []

    def record_then_spoil(result):
        test_acc_by_epoch.append(evaluate(model, test_loader, cuda=False)[1])
        if len(result.epochs) == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0).add_(torch.randn_like(p) * 0.5)
    result = train(model, Config(epochs=3, lr=1e-4), synthetic, on_epoch=record_then_spoil)
    assert result.best_epoch == 2
    assert result.epochs[2].val_acc < result.epochs[1].val_acc
    assert result.test_acc == test_acc_by_epoch[1] != test_acc_by_epoch[2]
    assert evaluate(model, test_loader, cuda=False)[1] == result.test_acc


class Killed(Exception):
    """Stands in for a worker killed between epochs."""


def test_a_checkpoint_resumes_after_its_last_finished_epoch(synthetic, tmp_path):
    config = Config(epochs=4)
    uninterrupted = train(fresh_mlp(), config, synthetic, seed=1)

    checkpoint = tmp_path / "trial-7.pt"

    def killed_after_two(result):
        if len(result.epochs) == 2:
            raise Killed
    with pytest.raises(Killed):
        train(fresh_mlp(), config, synthetic, seed=1, checkpoint=checkpoint,
              on_epoch=killed_after_two)
    assert checkpoint.exists()

    epochs_run = []
    resumed = train(fresh_mlp(seed=99), config, synthetic, seed=1, checkpoint=checkpoint,
                    on_epoch=lambda result: epochs_run.append(result.epochs[-1].epoch))
    assert epochs_run == [3, 4]                                  # only the missing epochs
    assert [e.epoch for e in resumed.epochs] == [1, 2, 3, 4]
    # Model, optimizer and data-order state all came back: the curves continue exactly.
    assert learned_curves(resumed) == learned_curves(uninterrupted)
    assert resumed.test_acc == uninterrupted.test_acc


def test_a_finished_checkpoint_runs_no_more_epochs(synthetic, tmp_path):
    checkpoint = tmp_path / "done.pt"
    first = train(fresh_mlp(), Config(epochs=2), synthetic, checkpoint=checkpoint)
    calls = []
    again = train(fresh_mlp(), Config(epochs=2), synthetic, checkpoint=checkpoint,
                  on_epoch=calls.append)
    assert calls == [] and learned_curves(again) == learned_curves(first)
    assert again.test_acc == first.test_acc


@pytest.mark.parametrize("name, kind, momentum_of", [
    ("sgd", torch.optim.SGD, lambda group: group["momentum"]),
    ("momentum", torch.optim.SGD, lambda group: group["momentum"]),
    ("adam", torch.optim.Adam, lambda group: group["betas"][0]),
    ("adamw", torch.optim.AdamW, lambda group: group["betas"][0]),
])
def test_optimizer_mapping(name, kind, momentum_of):
    config = Config(optimizer=name, lr=0.025, momentum=0.3, weight_decay=0.0075)
    optimizer = make_optimizer(fresh_mlp(), config, torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert type(optimizer) is kind
    assert group["lr"] == 0.025 and group["weight_decay"] == 0.0075
    assert momentum_of(group) == (0 if name == "sgd" else 0.3)    # plain SGD ignores momentum
    if kind is not torch.optim.SGD:
        assert group["betas"][1] == 0.999
