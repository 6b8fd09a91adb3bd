"""Deterministic test images: photo-like pictures (random weights make noise, PNG's worst case) and
reference files of plain colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic stand-in for a generated photograph (random weights make noise, PNG's worst
    case): gradients and soft waves with a little grain."""
    # A row and a column, broadcast: the same pixels as full coordinate grids, in half the time.
    x, y = np.arange(width, dtype=np.float32)[None, :], np.arange(height, dtype=np.float32)[:, None]
    rng = np.random.default_rng(seed)
    channels = [
        128 + 60 * np.sin(x / (40 + 13 * k) + k) * np.cos(y / (55 + 7 * k)) + 40 * (x + y) / (width + height) - 20
        for k in range(3)
    ]
    pixels = np.stack(channels, -1) + rng.normal(0, 2, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def reference_files(folder: Path, colours: tuple[str, ...] = ("green", "pink", "navy")) -> list[Path]:
    paths = []
    for colour in colours:
        path = folder / f"{colour}.png"
        Image.new("RGB", (512, 512), colour).save(path)
        paths.append(path)
    return paths
