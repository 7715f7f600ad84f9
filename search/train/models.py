"""The three classifiers: ResNet18 (torchvision, CIFAR stem), MLP-Mixer, and an MLP.

`build(model_name, config)` is the one entry point; `MODELS` maps names to builders.
`first_layer_weight(model)` is the weight that reports draw as pictures.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18

from spaces import Config

IMAGE_SIZE = 32
NUM_CLASSES = 10


def resnet18(config: Config) -> nn.Module:
    """torchvision's ResNet18 with the CIFAR stem: 3x3 conv, stride 1, no max-pool.

    11,173,962 parameters for 10 classes.
    """
    model = torchvision_resnet18(num_classes=NUM_CLASSES)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class MixerBlock(nn.Module):
    """LayerNorm -> token-mixing MLP (hidden c/2) -> LayerNorm -> channel-mixing MLP (4c)."""

    def __init__(self, tokens: int, channels: int, drop_rate: float):
        super().__init__()
        token_hidden, channel_hidden = channels // 2, 4 * channels  # the Mixer paper's 0.5, 4
        self.norm1 = nn.LayerNorm(channels)
        self.token_fc1 = nn.Linear(tokens, token_hidden)
        self.token_fc2 = nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(channels)
        self.channel_fc1 = nn.Linear(channels, channel_hidden)
        self.channel_fc2 = nn.Linear(channel_hidden, channels)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, tokens, channels)
        y = self.norm1(x).transpose(1, 2)               # mix along tokens
        y = self.token_fc2(self.drop(self.act(self.token_fc1(y))))
        x = x + self.drop(y.transpose(1, 2))
        y = self.channel_fc2(self.drop(self.act(self.channel_fc1(self.norm2(x)))))
        return x + self.drop(y)


class MLPMixer(nn.Module):
    def __init__(self, patch_size: int = 4, embed_dim: int = 256, num_blocks: int = 4,
                 drop_rate: float = 0.0):
        super().__init__()
        tokens = (IMAGE_SIZE // patch_size) ** 2
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*(MixerBlock(tokens, embed_dim, drop_rate)
                                      for _ in range(num_blocks)))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)     # (batch, tokens, channels)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def mlpmixer(config: Config) -> nn.Module:
    return MLPMixer(config.patch_size, config.embed_dim, config.num_blocks, config.drop_rate)


def mixer_parameter_count(patch_size: int, embed_dim: int, num_blocks: int) -> int:
    """The report's formula, per layer: proj 3cp^2 + c; per block 2c + (N*h + h) + (h*N + N)
    + 2c + (4c^2 + 4c) + (4c^2 + c) with h = c/2 (floored); final norm 2c; head 10c + 10."""
    c, p = embed_dim, patch_size
    n, h = (IMAGE_SIZE // p) ** 2, c // 2
    block = 2 * c + (n * h + h) + (h * n + n) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c)
    return 3 * c * p * p + c + num_blocks * block + 2 * c + 10 * c + 10


ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(config: Config) -> nn.Module:
    """Flatten -> [Linear, activation, dropout] per hidden size -> Linear to 10 classes."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 3 * IMAGE_SIZE * IMAGE_SIZE
    for hidden in config.hidden_sizes:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[config.activation]()]
        if config.drop_rate > 0:
            layers.append(nn.Dropout(config.drop_rate))
        width = hidden
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


MODELS = {"resnet18": resnet18, "mlpmixer": mlpmixer, "mlp": mlp}


def build(model_name: str, config: Config) -> nn.Module:
    return MODELS[model_name](config)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameters_per_layer(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, parameters it owns directly) for every module that owns some."""
    rows = []
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own:
            rows.append((name, own))
    return rows


def first_layer_weight(model_name: str, model: nn.Module) -> torch.Tensor:
    """The weight the report draws: ResNet18 conv1 (64, 3, 3, 3); Mixer block 1 token_fc1
    (c/2, N); the MLP's first Linear (hidden, 3*32*32)."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    if model_name == "resnet18":
        return model.conv1.weight
    if model_name == "mlpmixer":
        return model.blocks[0].token_fc1.weight
    return model[1].weight
