"""search.train.trainer: learning on synthetic data, determinism, divergence, early stop, the
best-epoch weights, the stepped loop against the loop it replaced (bit for bit), schedules per
batch, label smoothing, timings, the progress hook, no leaked model, the optimizer mapping.
(Checkpoints and resuming: tests/test_checkpoint.py.)"""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

import search.train.data
import search.train.steps
import search.train.trainer
from search.train.data import DeviceLoader, make_dataset
from search.train.models import build
from search.train.errors import Stopped
from search.train.trainer import Diverged, evaluate, make_optimizer, train
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


def test_a_stop_check_ends_the_run_before_the_next_step_or_evaluation_batch(synthetic):
    """`should_stop` is the caller's noted Ctrl-C: read before every training step and every
    evaluation batch, so a stop ends the run there even where its KeyboardInterrupt was lost."""
    steps, epochs = [], []
    per_epoch = len(synthetic.train) // 32
    for stop_at, stopped_in in ((3, "training"), (per_epoch, "validation")):
        steps.clear()
        with pytest.raises(Stopped) as caught:   # a KeyboardInterrupt, as the signal's own
            train(fresh_mlp(), Config(epochs=3, batch_size=32), synthetic,
                  on_step=lambda epoch, step, _: steps.append((epoch, step)),
                  on_epoch=lambda result: epochs.append(result) and False,
                  should_stop=lambda: len(steps) >= stop_at)
        assert isinstance(caught.value, KeyboardInterrupt)
        assert steps == [(1, n) for n in range(1, stop_at + 1)], stopped_in  # not one more
        assert epochs == [], stopped_in   # the last step's epoch was not evaluated to its end


def spoil(model) -> None:
    """Replace the weights by noise: the next epoch's validation accuracy drops."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0).add_(torch.randn_like(p) * 0.5)


def test_a_stopped_run_gives_the_model_its_best_epochs_weights(synthetic):
    model, weights = fresh_mlp(), {}

    def spoil_after_two_stop_after_three(result):
        weights[len(result.epochs)] = {k: v.clone() for k, v in model.state_dict().items()}
        if len(result.epochs) == 2:
            spoil(model)
        return len(result.epochs) == 3
    result = train(model, Config(epochs=5, lr=1e-4), synthetic,
                   on_epoch=spoil_after_two_stop_after_three)
    assert result.stopped_early and len(result.epochs) == 3 and result.best_epoch == 2
    final = model.state_dict()
    assert all(torch.equal(final[k], weights[2][k]) for k in final)
    assert not all(torch.equal(final[k], weights[3][k]) for k in final)


def test_the_test_set_is_evaluated_with_the_best_validation_weights(synthetic):
    """Spoil the weights after epoch 2 so epoch 3 is worse: the test result must be the one of
    epoch 2's weights, and the returned model must hold them."""
    model = fresh_mlp()
    mean, std = synthetic.normalisation()
    test_loader = DeviceLoader(synthetic.test, mean, std, 1024, train=False)
    test_acc_by_epoch = []

    def record_then_spoil(result):
        test_acc_by_epoch.append(evaluate(model, test_loader)[1])
        if len(result.epochs) == 2:
            spoil(model)
    result = train(model, Config(epochs=3, lr=1e-4), synthetic, on_epoch=record_then_spoil)
    assert result.best_epoch == 2
    assert result.epochs[2].val_acc < result.epochs[1].val_acc
    assert result.test_acc == test_acc_by_epoch[1] != test_acc_by_epoch[2]
    assert evaluate(model, test_loader)[1] == result.test_acc


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


# ---------------------------------------------------------------- the stepped loop, bit for bit

@pytest.fixture
def fp32(monkeypatch):
    """The trainer in plain fp32, as the loop before it trained on every CPU."""
    monkeypatch.setattr(search.train.trainer, "device_recipe",
                        lambda device: (torch.contiguous_format, None))


@pytest.mark.parametrize("model_name, config", [
    ("mlp", Config(epochs=2, optimizer="momentum", lr=0.01, drop_rate=0.2, batch_size=64)),
    ("mlpmixer", Config(epochs=2, patch_size=8, embed_dim=32, num_blocks=2, drop_rate=0.1,
                        batch_size=100)),
], ids=["mlp-dropout-momentum", "mixer-dropout-adamw"])
def test_the_stepped_loop_gives_the_old_loops_numbers_to_the_last_bit(synthetic, fp32,
                                                                       model_name, config):
    torch.manual_seed(3)
    result = train(build(model_name, config), config, synthetic, seed=4)
    torch.manual_seed(3)
    curves, test = reference_train(build(model_name, config), config, synthetic, seed=4)
    assert [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in result.epochs] == curves
    assert (result.test_loss, result.test_acc) == test


def test_divergence_is_found_at_the_same_step_as_the_old_loop(synthetic, fp32):
    config = Config(epochs=2, optimizer="sgd", lr=10.0)
    with pytest.raises(Diverged) as new:
        train(fresh_mlp(), config, synthetic)
    with pytest.raises(Diverged) as old:
        reference_train(fresh_mlp(), config, synthetic)
    assert str(new.value) == str(old.value)


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_the_cpu_trains_in_bf16_only_where_it_has_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(search.train.steps, "cpu_has_native_bf16", lambda: native)
    assert search.train.steps.device_recipe(torch.device("cpu")) == (torch.contiguous_format,
                                                               expected)
    assert search.train.steps.device_recipe(torch.device("cuda")) == (torch.channels_last,
                                                                torch.bfloat16)


def test_bf16_on_the_cpu_learns_and_is_deterministic(synthetic, monkeypatch):
    monkeypatch.setattr(search.train.trainer, "device_recipe",
                        lambda device: (torch.contiguous_format, torch.bfloat16))
    config = Config(epochs=2, drop_rate=0.1)
    first, second = (train(fresh_mlp(config=config), config, synthetic, seed=2)
                     for _ in range(2))
    assert learned_curves(first) == learned_curves(second)
    assert first.best_val_acc > 0.3


# ---------------------------------------------------------------- schedules, smoothing, hooks

def recorded_learning_rates(monkeypatch, synthetic, config) -> tuple[list, list]:
    """(lr of every optimizer step, (epoch, step, steps per epoch) of every on_step call)."""
    schedulers, rates, calls = [], [], []
    real = search.train.trainer.make_scheduler

    def keep(*args, **kwargs):
        schedulers.append(real(*args, **kwargs))
        rates.append(schedulers[-1].get_last_lr()[0])   # the lr of the first step
        return schedulers[-1]
    monkeypatch.setattr(search.train.trainer, "make_scheduler", keep)

    def on_step(epoch, step, steps):
        calls.append((epoch, step, steps))
        rates.append(schedulers[-1].get_last_lr()[0])
    train(fresh_mlp(), config, synthetic, on_step=on_step)
    return rates[:-1], calls     # the last rate is the one after the last step


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_the_schedule_is_stepped_once_per_batch(monkeypatch, synthetic, schedule):
    config = Config(epochs=2, batch_size=256, lr=0.01, schedule=schedule)
    rates, calls = recorded_learning_rates(monkeypatch, synthetic, config)
    steps = len(synthetic.train) // 256
    assert calls == [(e, s, steps) for e in (1, 2) for s in range(1, steps + 1)]
    assert all(type(n) is int for call in calls for n in call)    # host integers only
    assert len(rates) == 2 * steps
    if schedule == "constant":
        assert set(rates) == {0.01}
    else:
        assert max(rates) <= 0.01 + 1e-12 and rates[0] < 0.01 / 10 and rates[-1] < 0.01 / 10
        assert len(set(rates)) == len(rates)                      # a new value every step


def test_label_smoothing_changes_the_training_loss_only(synthetic):
    plain = train(fresh_mlp(), Config(epochs=1), synthetic)
    smoothed = train(fresh_mlp(), Config(epochs=1, label_smoothing=0.1), synthetic)
    assert smoothed.epochs[0].train_loss != plain.epochs[0].train_loss
    # The smoothed target's loss has a floor above 0; the validation loss stays plain
    # cross-entropy (so it compares across trials), and the model still learns.
    assert smoothed.best_val_acc > 0.3


def test_first_epoch_time_is_reported_apart_from_the_steady_mean(synthetic):
    result = train(fresh_mlp(), Config(epochs=3), synthetic)
    seconds = [e.train_seconds for e in result.epochs]
    assert result.warmup_epochs == [1]
    assert result.first_epoch_seconds == seconds[0]
    assert result.steady_train_seconds == pytest.approx((seconds[1] + seconds[2]) / 2)
    assert len(result.curves()["train_seconds"]) == 3              # the curves keep every epoch
    one = train(fresh_mlp(), Config(epochs=1), synthetic)
    assert one.steady_train_seconds == one.first_epoch_seconds == one.epochs[0].train_seconds


# ---------------------------------------------------------------- once per process

def test_data_statistics_are_computed_once_per_process(monkeypatch):
    calls = []
    real = search.train.data.channel_stats
    monkeypatch.setattr(search.train.data, "channel_stats",
                        lambda images: calls.append(len(images)) or real(images))
    data = make_dataset("synthetic", seed=0).to("cpu")
    for _ in range(3):                           # three trials of one process
        train(fresh_mlp(config=Config(hidden_sizes=(16,))),
              Config(epochs=1, hidden_sizes=(16,)), data, device="cpu")
    assert calls == [len(data.train)]
    assert data.to(torch.device("cpu")) is data


# ---------------------------------------------------------------- nothing kept alive

@pytest.fixture
def no_gc():
    """Reference counting only: whatever a cycle would keep alive stays alive."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_a_diverged_run_keeps_no_model_alive(synthetic, no_gc):
    model = fresh_mlp()
    alive = weakref.ref(model)
    parameter = weakref.ref(next(model.parameters()))
    with pytest.raises(Diverged) as caught:   # the caller keeps the exception and traceback
        train(model, Config(epochs=3, optimizer="sgd", lr=10.0), synthetic)
    assert caught.value.__traceback__ is not None
    del model
    assert alive() is None and parameter() is None


def test_a_failing_on_epoch_keeps_no_model_alive(synthetic, no_gc):
    model = fresh_mlp()
    alive = weakref.ref(model)

    def fail(result):
        raise KeyError("storage went away")
    with pytest.raises(KeyError) as caught:
        train(model, Config(epochs=3, optimizer="adamw"), synthetic, on_epoch=fail)
    assert "storage went away" in str(caught.value)
    del model, fail
    assert alive() is None


def test_a_stopped_or_finished_run_keeps_no_model_alive(synthetic, no_gc):
    for on_epoch in (lambda result: True, None):
        model = fresh_mlp()
        alive = weakref.ref(model)
        result = train(model, Config(epochs=1, optimizer="adamw"), synthetic, on_epoch=on_epoch)
        assert result.stopped_early == (on_epoch is not None)
        del model
        assert alive() is None


# ---------------------------------------------------------------- the loop before issue 13
# A verbatim copy (checkpoints left out) of the trainer's loop as it was before the step
# functions, schedules and checkpoints came: the stepped loop must give the same numbers.

def reference_train(model, config, data, seed=0):
    import math
    import torch.nn.functional as F

    device = torch.device("cpu")
    optimizer = make_optimizer(model, config, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    mean, std = data.normalisation()
    loader = DeviceLoader(data.train, mean, std, config.batch_size, train=True,
                          generator=generator)

    def evaluate_old(images):
        model.eval()
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        with torch.no_grad():
            for x, y in DeviceLoader(images, mean, std, 1024, train=False):
                logits = model(x)
                loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
        loss_value, correct_value = torch.stack([loss_sum, correct.float()]).tolist()
        return loss_value / len(images), correct_value / len(images)

    curves, best_val, best_state = [], None, None
    for epoch in range(1, config.epochs + 1):
        model.train()
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        seen = 0
        for step, (x, y) in enumerate(loader, start=1):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if not torch.isfinite(loss_sum):
                raise Diverged(f"training loss became {loss_sum.item()} in epoch {epoch} "
                               f"(step {step})")
        loss_value, correct_value = torch.stack([loss_sum, correct.float()]).tolist()
        if not math.isfinite(loss_value):
            raise Diverged(f"training loss became {loss_value} in epoch {epoch}")
        val_loss, val_acc = evaluate_old(data.val)
        curves.append((loss_value / seen, correct_value / seen, val_loss, val_acc))
        if best_val is None or val_acc > best_val:
            best_val = val_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return curves, evaluate_old(data.test)
