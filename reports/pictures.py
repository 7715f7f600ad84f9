"""First-layer weights drawn as pictures (torchvision's make_grid), each tile min-max scaled.

- resnet18: conv1 (64, 3, 3, 3) -> 64 RGB tiles of 3x3, and their grayscale mean over inputs;
- mlpmixer: block 1 token_fc1 (c/2, N) -> c/2 gray tiles on the token grid (8x8 for patch 4);
- mlp: first Linear (hidden, 3072) -> one 32x32 RGB tile per hidden unit.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image


def minmax(tiles: torch.Tensor) -> torch.Tensor:
    """Scale each tile (first axis) to [0, 1] on its own."""
    flat = tiles.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp_min(1e-12)
    return scaled.view_as(tiles)


def tiles(model_name: str, weight: np.ndarray, grayscale: bool = False) -> torch.Tensor:
    """(count, channels, h, w) tiles in [0, 1] for a first-layer weight."""
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    if model_name == "resnet18":
        if grayscale:
            w = w.mean(dim=1, keepdim=True)
        return minmax(w)
    if model_name == "mlpmixer":
        side = math.isqrt(w.shape[1])  # N tokens on a side x side grid
        return minmax(w.view(w.shape[0], 1, side, side))
    return minmax(w.view(w.shape[0], 3, 32, 32))


def grid_image(model_name: str, weight: np.ndarray, grayscale: bool = False) -> torch.Tensor:
    t = tiles(model_name, weight, grayscale)
    return make_grid(t, nrow=math.ceil(math.sqrt(len(t))), padding=1, pad_value=1.0)


def save_first_layer_picture(model_name: str, weight: np.ndarray, path: str | Path,
                             grayscale: bool = False, scale: int = 8) -> Path:
    """Write the tiles as one PNG, each pixel enlarged `scale` times so 3x3 kernels show."""
    image = grid_image(model_name, weight, grayscale)
    image = torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="nearest")[0]
    save_image(image, str(path))
    return Path(path)
