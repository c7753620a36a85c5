"""Evaluation during training: the EMA network sampled on the validation folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmsr_infer import flow
from fmsr_infer.metrics import Scores, mean_scores, score, to_uint8
from fmsr_infer.samplers import get_sampler, make_grid
from fmsr_train.data import Pair
from fmsr_train.resize_torch import upsample


@torch.no_grad()
def super_resolve(
    model: torch.nn.Module,
    lr: torch.Tensor,
    fm,
    steps: int,
    sampler: str = "euler",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    grid: str = "uniform",
    shift: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample SR images from LR [N, 3, h, w] in [0, 1]; returns (sr, bicubic) in [0, 1].

    The eager-PyTorch reference of the runtime's loop: same path, grids and samplers.
    """
    model.eval()
    cond = flow.to_network(upsample(lr))
    noise = torch.randn(cond.shape, generator=generator, device="cpu").to(cond.device)
    x = temperature * noise

    def velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device)
        out = model(x_t, cond, t_batch).float()
        if fm.prediction == "x1":
            return flow.velocity_from_x1(out, x_t, t, fm.t_floor)
        return out

    x, _ = get_sampler(sampler)(velocity, x, make_grid(grid, steps, shift))
    image = flow.image_from_data(x, cond, fm.target, fm.residual_scale)
    return flow.from_network(image).clamp(0, 1), flow.from_network(cond).clamp(0, 1)


def to_hwc_uint8(img: torch.Tensor) -> np.ndarray:
    return to_uint8(img.permute(1, 2, 0).cpu().numpy())


def evaluate(
    model: torch.nn.Module,
    pairs: list[Pair],
    fm,
    steps: int,
    device: torch.device,
    seed: int = 0,
    temperature: float | None = None,
    sampler: str = "euler",
    grid_path: Path | None = None,
    time_grid: str = "uniform",
    shift: float | None = None,
) -> dict[str, float]:
    """Score the model and bicubic on validation pairs; optionally write a sample grid.

    The sample grid shows bicubic | ours | HR for the first image. `time_grid` and
    `shift` choose the sampler's time grid (`fmsr_infer.samplers.make_grid`).
    """
    if temperature is None:
        temperature = fm.temperature_default
    ours: list[Scores] = []
    bicubic: list[Scores] = []
    generator = torch.Generator().manual_seed(seed)
    for i, pair in enumerate(pairs):
        lr = torch.from_numpy(pair.lr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        sr, up = super_resolve(
            model, lr.to(device), fm, steps, sampler, temperature, generator, time_grid, shift
        )
        sr8, up8 = to_hwc_uint8(sr[0]), to_hwc_uint8(up[0])
        ours.append(score(sr8, pair.hr))
        bicubic.append(score(up8, pair.hr))
        if i == 0 and grid_path is not None:
            grid_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate([up8, sr8, pair.hr], axis=1)).save(grid_path)
    m, b = mean_scores(ours), mean_scores(bicubic)
    return {
        "psnr_y": m.psnr_y,
        "ssim_y": m.ssim_y,
        "psnr_rgb": m.psnr_rgb,
        "bicubic_psnr_y": b.psnr_y,
        "bicubic_ssim_y": b.ssim_y,
        "per_image_psnr_y": [s.psnr_y for s in ours],
        "per_image_bicubic_psnr_y": [s.psnr_y for s in bicubic],
    }
