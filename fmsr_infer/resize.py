"""MATLAB-compatible bicubic resize, the one resampling definition of fmsr.

The trainer makes LR from HR with `imresize(hr, 1 / 4)` and conditions the network on
`upsample(lr)`; the runtime and the compiled kernels use the same weight tables from
`resize_weights`, so all of them compute one upsample.

MATLAB's `imresize(..., 'bicubic')` conventions (as implemented in BasicSR's
`matlab_functions.py`, which reproduces the official LR of Set5 and DIV2K):
- Keys cubic kernel with a = -0.5, 4 taps;
- when downscaling with antialiasing, the kernel is widened to 4 / scale taps and its
  values scaled by `scale`;
- output size ceil(in * scale); source coordinate u = x / scale + 0.5 * (1 - 1 / scale),
  1-based (pixel centres aligned);
- symmetric edge mirroring (the edge pixel repeated);
- separable, height first, then width, in float64 with no rounding.
"""

from __future__ import annotations

import math

import numpy as np

SCALE = 4


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Evaluate the Keys cubic convolution kernel at `x`."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    inner = ((a + 2) * absx3 - (a + 3) * absx2 + 1) * (absx <= 1)
    outer = (a * absx3 - 5 * a * absx2 + 8 * a * absx - 4 * a) * ((absx > 1) & (absx <= 2))
    return inner + outer


def resize_weights(
    in_len: int, out_len: int, scale: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Compute the tap weights and source indices of a 1-D MATLAB bicubic resize.

    Returns:
        weights: [out_len, P] float64, each row summing to 1.
        indices: [out_len, P] int64, zero-based source indices, already mirrored
            symmetrically into [0, in_len).
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"resize lengths must be positive, got in={in_len} out={out_len}")
    kernel_width = 4.0
    widen = scale < 1 and antialias
    if widen:
        kernel_width /= scale

    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    distance = u[:, None] - indices
    if widen:
        weights = scale * cubic(distance * scale)
    else:
        weights = cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Drop tap columns that carry no weight for any output (MATLAB does the same).
    keep = np.any(weights != 0, axis=0)
    weights = weights[:, keep]
    indices = indices[:, keep].astype(np.int64) - 1

    # Symmetric mirroring: ..., 1, 0 | 0, 1, ..., n-1 | n-1, n-2, ...
    period = 2 * in_len
    indices = np.mod(indices, period)
    indices = np.where(indices >= in_len, period - 1 - indices, indices)
    return weights, indices


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float, antialias: bool):
    weights, indices = resize_weights(img.shape[axis], out_len, scale, antialias)
    gathered = np.take(img, indices, axis=axis)  # axis becomes [out_len, P]
    shape = [1] * gathered.ndim
    shape[axis] = weights.shape[0]
    shape[axis + 1] = weights.shape[1]
    return np.sum(gathered * weights.reshape(shape), axis=axis + 1)


def imresize(img: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """Resize an [H, W] or [H, W, C] image by `scale` as MATLAB's bicubic imresize.

    The input may be any real dtype; the output is float64, unrounded and unclamped,
    of size ceil(H * scale) x ceil(W * scale).
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects [H, W] or [H, W, C], got shape {img.shape}")
    img = np.asarray(img, dtype=np.float64)
    out_h = int(math.ceil(img.shape[0] * scale))
    out_w = int(math.ceil(img.shape[1] * scale))
    img = _resize_axis(img, 0, out_h, scale, antialias)
    return _resize_axis(img, 1, out_w, scale, antialias)


def downsample(hr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Make the LR of an HR image in [0, 1] the way the field does (float64 result)."""
    return imresize(hr, 1.0 / scale)


def upsample(lr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Bicubic-upsample an [H, W, C] or [H, W] LR image: the network's conditioning."""
    return imresize(lr, float(scale))


def upsample_tables(in_h: int, in_w: int, scale: int = SCALE):
    """Return the (row, column) weight and index tables of `upsample`, as float32/int32.

    These are what the compiled kernels and the trainer's torch upsample consume.
    """
    row_w, row_i = resize_weights(in_h, in_h * scale, float(scale))
    col_w, col_i = resize_weights(in_w, in_w * scale, float(scale))
    return (
        row_w.astype(np.float32),
        row_i.astype(np.int32),
        col_w.astype(np.float32),
        col_i.astype(np.int32),
    )


def mod_crop(img: np.ndarray, multiple: int = SCALE) -> np.ndarray:
    """Crop the bottom and right of an image so both sides are multiples of `multiple`."""
    h = img.shape[0] - img.shape[0] % multiple
    w = img.shape[1] - img.shape[1] % multiple
    return img[:h, :w]
