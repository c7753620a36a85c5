"""UNetSR: a small three-scale UNet without normalization layers.

Batch and group normalization wash out local contrast when a network is trained on
small patches and run on whole images, so this network has none. Each residual block
is Conv, SiLU, Conv, scaled by `res_scale` before it is added back, which keeps the
activations bounded without normalization (as in EDSR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class ModelConfig:
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    blocks_per_scale: int = 2
    res_scale: float = 0.2
    time_dim: int = 64

    def __post_init__(self):
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if len(self.channel_mult) != 3:
            raise ValueError(
                f"model.channel_mult must have 3 entries (three scales), got {self.channel_mult}"
            )
        if self.base_channels < 1 or self.blocks_per_scale < 1:
            raise ValueError(
                "model.base_channels and model.blocks_per_scale must be positive, got "
                f"{self.base_channels} and {self.blocks_per_scale}"
            )


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Embed times t in [0, 1], shape [N], as [N, dim] sinusoids of 1000·t."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = 1000.0 * t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    """x + res_scale · Conv(SiLU(Conv(x) + time bias))."""

    def __init__(self, channels: int, emb_dim: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.time_bias = nn.Linear(emb_dim, channels)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.time_bias(emb)[:, :, None, None]
        h = self.conv2(F.silu(h))
        return x + self.res_scale * h


class UNetSR(nn.Module):
    """Predict the velocity (or x_1) of the flow from the state and the conditioning.

    Inputs: x_t [N, 3, H, W] and cond [N, 3, H, W] (the bicubic-upsampled LR), both
    float in network units ([-1, 1] for images), and t [N] in [0, 1]. H and W must be
    multiples of `size_multiple` (4). Output: [N, 3, H, W].
    """

    size_multiple = 4

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        emb_dim = 4 * cfg.time_dim
        self.grad_checkpoint = False

        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.conv_in = nn.Conv2d(6, widths[0], 3, padding=1)

        def blocks(width: int) -> nn.ModuleList:
            return nn.ModuleList(
                ResBlock(width, emb_dim, cfg.res_scale) for _ in range(cfg.blocks_per_scale)
            )

        self.enc0 = blocks(widths[0])
        self.down0 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1)
        self.enc1 = blocks(widths[1])
        self.down1 = nn.Conv2d(widths[1], widths[2], 3, stride=2, padding=1)
        self.mid = blocks(widths[2])
        self.up1 = nn.Conv2d(widths[2], widths[1] * 4, 3, padding=1)
        self.fuse1 = nn.Conv2d(widths[1] * 2, widths[1], 1)
        self.dec1 = blocks(widths[1])
        self.up0 = nn.Conv2d(widths[1], widths[0] * 4, 3, padding=1)
        self.fuse0 = nn.Conv2d(widths[0] * 2, widths[0], 1)
        self.dec0 = blocks(widths[0])
        self.conv_out = nn.Conv2d(widths[0], 3, 3, padding=1)

        # A zero output layer starts the model at "predict zero", which for the residual
        # target is the bicubic upsample.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _run(self, stage: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in stage:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, emb, use_reentrant=False)
            else:
                h = block(h, emb)
        return h

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim).to(x_t.dtype))

        # Encoder: full, half and quarter resolution.
        h0 = self._run(self.enc0, self.conv_in(torch.cat([x_t, cond], dim=1)), emb)
        h1 = self._run(self.enc1, self.down0(h0), emb)
        h2 = self._run(self.mid, self.down1(h1), emb)

        # Decoder: sub-pixel upsampling, then a 1x1 fusion with the skip connection.
        u1 = F.pixel_shuffle(self.up1(h2), 2)
        u1 = self._run(self.dec1, self.fuse1(torch.cat([u1, h1], dim=1)), emb)
        u0 = F.pixel_shuffle(self.up0(u1), 2)
        u0 = self._run(self.dec0, self.fuse0(torch.cat([u0, h0], dim=1)), emb)
        return self.conv_out(F.silu(u0))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
