"""First-layer weights drawn as pictures (torchvision's make_grid), each tile min-max scaled.

- resnet18: conv1 (64, 3, 3, 3) -> 64 RGB tiles of 3x3 on an 8x8 grid, and their grayscale
  mean over the input channels (the report's Figures 16-17);
- mlpmixer: block 1 token_fc1 (c/2, N) -> c/2 gray tiles on the token grid, 8x8 for patch 4
  (Figure 18);
- mlp: first Linear (hidden, 3*32*32) -> one 32x32 RGB tile per hidden unit, the first
  MLP_TILES of them (all 512 make a 1.5 MB picture of noise-like tiles).

No torch model is needed: the weight comes from the artifact store as a NumPy array.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

PADDING = 1            # pixels of white between tiles, before enlarging
TILE_PIXELS = 32       # each tile is enlarged to about this many pixels a side
MLP_TILES = 64         # hidden units drawn for the MLP (an 8x8 grid, ~130 KB of PNG)


def minmax(tiles: torch.Tensor) -> torch.Tensor:
    """Scale each tile (first axis) to [0, 1] on its own; a constant tile becomes 0."""
    flat = tiles.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp_min(1e-12)
    return scaled.view_as(tiles)


def tiles(model_name: str, weight: np.ndarray, grayscale: bool = False) -> torch.Tensor:
    """(count, channels, h, w) tiles in [0, 1] for a first-layer weight.

    `grayscale` (resnet18 only) averages the raw kernels over the input channels first,
    then scales each mean kernel.
    """
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    if model_name == "resnet18":          # (64, 3, 3, 3): out, in (RGB), kh, kw
        if grayscale:
            w = w.mean(dim=1, keepdim=True)
        return minmax(w)
    if model_name == "mlpmixer":          # (c/2, N): each row is a weight per token
        side = math.isqrt(w.shape[1])     # N tokens on a side x side grid, row-major
        if side * side != w.shape[1]:
            raise ValueError(f"token-mixing weight {tuple(w.shape)}: {w.shape[1]} tokens "
                             "do not form a square grid")
        return minmax(w.reshape(w.shape[0], 1, side, side))
    if model_name == "mlp":               # (hidden, 3072): inputs are flattened (3, 32, 32)
        w = w[:MLP_TILES]
        return minmax(w.reshape(w.shape[0], 3, 32, 32))
    raise ValueError(f"no first-layer picture for model {model_name!r}")


def grid_columns(count: int) -> int:
    """Tiles per row: 8 for ResNet18's 64 kernels, 16 (x 8 rows) for the Mixer's 128.

    The smallest divisor of `count` from sqrt(count) up fills every row, if the grid is at
    most twice as wide as tall; otherwise a square-ish grid with a shorter last row.
    """
    square = math.ceil(math.sqrt(count))
    for columns in range(square, 2 * square + 1):
        if count % columns == 0 and columns <= 2 * (count // columns):
            return columns
    return square


def grid_image(model_name: str, weight: np.ndarray, grayscale: bool = False) -> torch.Tensor:
    """(3, H, W) image in [0, 1]: the tiles on a grid with 1-pixel white borders."""
    t = tiles(model_name, weight, grayscale)
    return make_grid(t, nrow=grid_columns(len(t)), padding=PADDING, pad_value=1.0)


def enlarge(image: torch.Tensor, tile_side: int) -> torch.Tensor:
    """Nearest-neighbour enlargement so a 3x3 kernel shows as ~30 pixels, not 3."""
    scale = max(1, TILE_PIXELS // tile_side)
    return torch.nn.functional.interpolate(image[None], scale_factor=scale, mode="nearest")[0]


def picture(model_name: str, weight: np.ndarray, grayscale: bool = False) -> torch.Tensor:
    """The enlarged grid image, (3, H, W) in [0, 1], ready to save."""
    tile_side = tiles(model_name, weight, grayscale).shape[-1]
    return enlarge(grid_image(model_name, weight, grayscale), tile_side)


def picture_png(model_name: str, weight: np.ndarray, grayscale: bool = False) -> bytes:
    """The picture as PNG bytes (for files, data: URIs and the dashboard)."""
    buffer = io.BytesIO()
    save_image(picture(model_name, weight, grayscale), buffer, format="png")
    return buffer.getvalue()


def picture_variants(model_name: str) -> dict[str, bool]:
    """Picture name -> grayscale flag: ResNet18 gets RGB and gray, the others one picture."""
    if model_name == "resnet18":
        return {"first_layer_rgb": False, "first_layer_gray": True}
    if model_name == "mlpmixer":
        return {"token_mixing_block1": False}
    return {"first_layer_rows": False}


CAPTIONS = {
    "first_layer_rgb": "ResNet18 conv1: its 64 RGB kernels of 3x3, each min-max scaled to [0, 1]",
    "first_layer_gray": "ResNet18 conv1: each kernel's mean over the 3 input channels, scaled",
    "token_mixing_block1": "MLP-Mixer block 1, first token-mixing layer: each of its embed_dim/2 "
                           "rows drawn on the token grid (8x8 for patch 4), scaled",
    "first_layer_rows": f"MLP first layer: the weights of its first {MLP_TILES} hidden units "
                        "as 32x32 RGB images, scaled",
}


def save_first_layer_picture(model_name: str, weight: np.ndarray, path: str | Path,
                             grayscale: bool = False) -> Path:
    """Write the tiles as one PNG (the objective uploads it as the trial's first_layer.png)."""
    Path(path).write_bytes(picture_png(model_name, weight, grayscale))
    return Path(path)
