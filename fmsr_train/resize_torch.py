"""The conditioning upsample in torch, from the same weight tables as the runtime."""

from __future__ import annotations

import functools

import torch

from fmsr_infer.resize import SCALE, resize_weights


@functools.lru_cache(maxsize=64)
def _matrix(in_len: int, scale: int) -> torch.Tensor:
    """Dense [in_len * scale, in_len] float64 matrix of the 1-D bicubic upsample."""
    weights, indices = resize_weights(in_len, in_len * scale, float(scale))
    matrix = torch.zeros(in_len * scale, in_len, dtype=torch.float64)
    rows = torch.arange(in_len * scale)[:, None].expand(-1, weights.shape[1])
    matrix.index_put_(
        (rows.reshape(-1), torch.from_numpy(indices).reshape(-1)),
        torch.from_numpy(weights).reshape(-1),
        accumulate=True,
    )
    return matrix


def upsample(x: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic-upsample [N, C, H, W] images by `scale` (rows first, then columns).

    Equal to `fmsr_infer.resize.upsample` up to float32 rounding.
    """
    rows = _matrix(x.shape[-2], scale).to(device=x.device, dtype=torch.float32)
    cols = _matrix(x.shape[-1], scale).to(device=x.device, dtype=torch.float32)
    x = torch.matmul(rows, x.float())
    return torch.matmul(x, cols.T)
