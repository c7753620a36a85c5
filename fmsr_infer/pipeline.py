"""Super-resolve one image: conditioning, noise, the ODE loop, and the output image."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmsr_infer import flow
from fmsr_infer.model_info import ModelInfo
from fmsr_infer.noise import gaussian_noise
from fmsr_infer.resize import upsample
from fmsr_infer.samplers import get_sampler, uniform_grid

log = logging.getLogger(__name__)


@dataclass
class SampleSettings:
    steps: int = 8
    sampler: str = "euler"
    seed: int = 0
    temperature: float = 0.0


@dataclass
class Result:
    image: np.ndarray  # [4H, 4W, C] float32 in [0, 1]
    network_calls: int


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    """Reflect-pad a [..., H, W] array at the bottom and right to multiples of `multiple`."""
    h, w = x.shape[-2:]
    pad_h = (-h) % multiple
    pad_w = (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, 0, 0
    widths = [(0, 0)] * (x.ndim - 2) + [(0, pad_h), (0, pad_w)]
    mode = "reflect" if h > pad_h and w > pad_w else "symmetric"
    if h <= pad_h or w <= pad_w:
        mode = "edge"
    return np.pad(x, widths, mode=mode), pad_h, pad_w


class Upscaler:
    """Run the flow ODE around a network backend for RGB images.

    `backend(x_t, cond, t)` takes [N, 3, H, W], [N, 3, H, W] and [N] float32 arrays
    and returns the network output [N, 3, H, W].
    """

    def __init__(self, backend: Callable, info: ModelInfo):
        self.backend = backend
        self.info = info

    def velocity_fn(self, cond: np.ndarray) -> Callable:
        info = self.info

        def velocity(x_t: np.ndarray, t: float) -> np.ndarray:
            t_batch = np.full((x_t.shape[0],), t, dtype=np.float32)
            out = self.backend(x_t, cond, t_batch)
            if info.prediction == "x1":
                return flow.velocity_from_x1(out, x_t, np.float32(t), info.t_floor)
            return out

        return velocity

    def sample(self, cond: np.ndarray, noise: np.ndarray, settings: SampleSettings):
        """Integrate from temperature-scaled noise; cond, noise are [N, 3, H, W] float32.

        Returns (image in network units [N, 3, H, W] float32, network calls).
        """
        x = (np.float32(settings.temperature) * noise).astype(np.float32)
        sampler = get_sampler(settings.sampler)
        x, calls = sampler(self.velocity_fn(cond), x, uniform_grid(settings.steps))
        image = flow.image_from_data(x, cond, self.info.target, np.float32(self.info.residual_scale))
        return image.astype(np.float32), calls

    def upscale(self, lr01: np.ndarray, settings: SampleSettings) -> Result:
        """Super-resolve an [h, w, 3] RGB image in [0, 1] by the model's scale."""
        if lr01.ndim != 3 or lr01.shape[2] != 3:
            raise ValueError(f"upscale expects an [h, w, 3] RGB array, got shape {lr01.shape}")
        out_h, out_w = lr01.shape[0] * self.info.scale, lr01.shape[1] * self.info.scale

        # Conditioning: the bicubic upsample in network units, padded to the size multiple.
        cond = flow.to_network(upsample(lr01, self.info.scale)).astype(np.float32)
        cond = cond.transpose(2, 0, 1)[None]
        cond, _, _ = pad_to_multiple(cond, self.info.size_multiple)

        # Noise: one field per seed, indexed by (channel, row, column) of the output.
        noise = gaussian_noise(settings.seed, 3, cond.shape[2], cond.shape[3])[None]

        image, calls = self.sample(cond, noise, settings)
        image = flow.from_network(image[0, :, :out_h, :out_w]).transpose(1, 2, 0)
        return Result(np.clip(image, 0.0, 1.0), calls)
