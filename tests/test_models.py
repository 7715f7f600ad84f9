"""search.train.models: the report's parameter counts, output shapes, activations, first layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from search.train.models import (MODELS, build, first_layer_weight, mixer_parameter_count,
                           parameter_count, parameters_per_layer)
from spaces import Config


def test_resnet18_has_the_cifar_stem_and_the_published_count():
    model = build("resnet18", Config())
    assert parameter_count(model) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize("patch_size, expected", [(4, 2_188_298), (8, 2_175_818),
                                                  (16, 2_310_938)])
def test_mlpmixer_matches_the_report_table(patch_size, expected):
    model = build("mlpmixer", Config(patch_size=patch_size, embed_dim=256, num_blocks=4))
    assert parameter_count(model) == expected
    assert mixer_parameter_count(patch_size, 256, 4) == expected
    # The report's closed form for c = 256, 4 blocks.
    assert expected == 768 * patch_size**2 + 4 * (263168 // patch_size**2 + 526720) + 3338


@pytest.mark.parametrize("patch_size, embed_dim, num_blocks", [
    (2, 64, 2), (4, 101, 3), (8, 300, 6), (16, 77, 1), (32, 65, 5), (1, 8, 1)])
def test_mlpmixer_count_equals_the_formula_for_other_settings(patch_size, embed_dim, num_blocks):
    model = build("mlpmixer", Config(patch_size=patch_size, embed_dim=embed_dim,
                                     num_blocks=num_blocks))
    assert parameter_count(model) == mixer_parameter_count(patch_size, embed_dim, num_blocks)


def test_parameters_per_layer_sum_to_the_total():
    model = build("mlpmixer", Config(patch_size=8))
    rows = parameters_per_layer(model)
    assert sum(count for _, count in rows) == parameter_count(model)
    assert dict(rows)["proj"] == 3 * 256 * 8 * 8 + 256


@pytest.mark.parametrize("name, config", [
    ("resnet18", Config()),
    ("mlpmixer", Config(embed_dim=64, num_blocks=2)),
    ("mlpmixer", Config(patch_size=16, embed_dim=33, num_blocks=1, drop_rate=0.3)),
    ("mlp", Config()),
    ("mlp", Config(hidden_sizes=(7,), activation="gelu", drop_rate=0.5)),
])
def test_forward_gives_ten_logits_per_image(name, config):
    torch.manual_seed(0)
    model = build(name, config).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_models_registry_names_the_three_models():
    assert set(MODELS) == {"resnet18", "mlpmixer", "mlp"}


@pytest.mark.parametrize("activation, layer", [("relu", nn.ReLU), ("sigmoid", nn.Sigmoid),
                                               ("tanh", nn.Tanh), ("gelu", nn.GELU)])
def test_mlp_uses_the_chosen_activation_after_every_hidden_layer(activation, layer):
    model = build("mlp", Config(activation=activation, hidden_sizes=(64, 32, 16)))
    activations = [m for m in model if isinstance(m, layer)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(activations) == 3
    assert [l.out_features for l in linears] == [64, 32, 16, 10]
    assert linears[0].in_features == 3 * 32 * 32
    others = {nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU} - {layer}
    assert not any(isinstance(m, tuple(others)) for m in model)


def test_mlp_dropout_only_when_asked():
    assert not any(isinstance(m, nn.Dropout) for m in build("mlp", Config(drop_rate=0.0)))
    dropouts = [m for m in build("mlp", Config(drop_rate=0.25)) if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2 and dropouts[0].p == 0.25


@pytest.mark.parametrize("name, config, shape", [
    ("resnet18", Config(), (64, 3, 3, 3)),
    ("mlpmixer", Config(), (128, 64)),                      # (c/2, N) = (128, (32/4)^2)
    ("mlpmixer", Config(patch_size=8, embed_dim=101), (50, 16)),
    ("mlp", Config(hidden_sizes=(40, 20)), (40, 3 * 32 * 32)),
])
def test_first_layer_weight_shapes(name, config, shape):
    model = build(name, config)
    weight = first_layer_weight(name, model)
    assert tuple(weight.shape) == shape
    assert any(weight is p for p in model.parameters())  # the live weight, not a copy
