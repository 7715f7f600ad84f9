"""First-layer weights drawn as pictures (NumPy and Pillow), each tile scaled to its own range.

- resnet18: conv1 (64, 3, 3, 3) -> 64 RGB tiles of 3x3 on an 8x8 grid, and their grayscale
  mean over the input channels (the report's Figures 16-17);
- mlpmixer: block 1 token_fc1 (c/2, N) -> c/2 gray tiles on the token grid, 8x8 for patch 4
  (Figure 18);
- mlp: first Linear (hidden, 3*32*32) -> one 32x32 RGB tile per hidden unit, the first
  MLP_TILES of them (all 512 make a 1.5 MB picture of noise-like tiles).

Tiles are min-max scaled one by one, so each spans black to white; a white separator would
merge with every tile's brightest pixels and any grey with some of its middle ones, so
tiles sit on a dark slate (SEPARATOR): neutral to the eye, but off the grey scale. Every picture is enlarged (nearest neighbour, whole
pixels) to at least MIN_WIDTH pixels: the same PNG in the dashboard, `plots` and `report`.
No torch is needed: the weight comes from the artifact store as a NumPy array.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

SEPARATOR = (0.15, 0.18, 0.24)  # RGB in [0, 1] between tiles and around the grid
GAP = 6            # pixels of separator between tiles, in the enlarged picture
MIN_WIDTH = 512    # pixels: the smallest picture any model gets
MLP_TILES = 64     # hidden units drawn for the MLP (an 8x8 grid)


def minmax(tiles: np.ndarray) -> np.ndarray:
    """Scale each tile (first axis) to [0, 1] on its own; a constant tile becomes 0."""
    flat = tiles.reshape(len(tiles), -1).astype(np.float64)
    low, high = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    scaled = (flat - low) / np.maximum(high - low, 1e-12)
    return scaled.reshape(tiles.shape)


def tiles(model_name: str, weight: np.ndarray, grayscale: bool = False) -> np.ndarray:
    """(count, channels, h, w) tiles in [0, 1] for a first-layer weight.

    `grayscale` (resnet18 only) averages the raw kernels over the input channels first,
    then scales each mean kernel.
    """
    w = np.asarray(weight, dtype=np.float64)
    if model_name == "resnet18":          # (64, 3, 3, 3): out, in (RGB), kh, kw
        if grayscale:
            w = w.mean(axis=1, keepdims=True)
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


def tile_scale(columns: int, tile_side: int) -> int:
    """Whole-pixel enlargement so the grid (tiles and gaps) is at least MIN_WIDTH wide."""
    return max(1, math.ceil((MIN_WIDTH - (columns + 1) * GAP) / (columns * tile_side)))


def picture(model_name: str, weight: np.ndarray, grayscale: bool = False) -> np.ndarray:
    """(H, W, 3) uint8: enlarged tiles on a grid, GAP pixels of SEPARATOR around each."""
    t = tiles(model_name, weight, grayscale)
    count, channels, side = len(t), t.shape[1], t.shape[-1]
    columns = grid_columns(count)
    rows = math.ceil(count / columns)
    scale = tile_scale(columns, side)
    step = side * scale + GAP              # pixels from one tile's left edge to the next
    image = np.empty((rows * step + GAP, columns * step + GAP, 3))
    image[:] = SEPARATOR
    for index, tile in enumerate(t):
        big = tile.repeat(scale, axis=1).repeat(scale, axis=2)   # (channels, h*s, w*s)
        if channels == 1:
            big = big.repeat(3, axis=0)
        top, left = GAP + (index // columns) * step, GAP + (index % columns) * step
        image[top:top + side * scale, left:left + side * scale] = big.transpose(1, 2, 0)
    return np.round(image * 255).astype(np.uint8)


def picture_png(model_name: str, weight: np.ndarray, grayscale: bool = False) -> bytes:
    """The picture as PNG bytes (for files, data: URIs and the dashboard)."""
    buffer = io.BytesIO()
    Image.fromarray(picture(model_name, weight, grayscale), "RGB").save(buffer, format="png")
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
