"""The benchmark's input image, made from a seed so that every run gets the same pixels.

This module needs only numpy, so the memory probe of the runtime can import it without
pulling in torch.
"""

from __future__ import annotations

import numpy as np


def synthetic_lr(size: int, seed: int = 0) -> np.ndarray:
    """Return a [size, size, 3] uint8 image with smooth gradients, hard edges and texture.

    The content does not change the time of a dense network, but a flat image would
    hide differences between backends in the parity check.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    red = 0.5 + 0.4 * np.sin(2 * np.pi * (1.5 * x + 0.5 * y))
    green = 0.5 + 0.4 * np.cos(2 * np.pi * (0.7 * x - 1.3 * y))
    blue = 0.25 + 0.5 * x * y
    image = np.stack([red, green, blue], axis=-1)

    # A few rectangles with hard edges, then fine texture.
    for _ in range(6):
        top, left = rng.integers(0, size, size=2)
        height, width = rng.integers(size // 8 + 1, size // 3 + 2, size=2)
        image[top : top + height, left : left + width] = rng.uniform(0, 1, size=3)
    image += rng.normal(0.0, 0.04, size=image.shape)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
