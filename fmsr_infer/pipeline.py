"""Super-resolve one image: conditioning, noise, the ODE loop, and the output pixels.

`Upscaler.upscale_image` runs a decoded `LRImage` tile by tile (`fmsr_infer.tiling`)
and hands finished output rows, already in the output's pixel format, to a sink.
Images of every kind run through the same RGB network:

- grayscale: the gray channel is repeated to RGB for the network, and the output is
  turned back into one channel by its ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B
  (the weights Pillow's convert("L") uses);
- alpha: upscaled by the same bicubic upsample as the conditioning, clamped to [0, 1],
  and kept; the colour channels run through the network unpremultiplied;
- 16-bit inputs give 16-bit outputs, rounded to the nearest of 65535 levels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fmsr_infer import flow, kernels
from fmsr_infer.imageio import LRImage
from fmsr_infer.model_info import ModelInfo
from fmsr_infer.samplers import get_sampler, make_grid
from fmsr_infer.tiling import RegionUpsampler, TileSettings, pad_to_multiple, sample_tiled

__all__ = ["Result", "SampleSettings", "Upscaler", "UpscaleStats", "pad_to_multiple"]

log = logging.getLogger(__name__)

BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class SampleSettings:
    """The sampling of one image: `steps` intervals of the time grid `grid`.

    `shift` applies to the "shifted" grid only (see `fmsr_infer.samplers.make_grid`).
    """

    steps: int = 8
    sampler: str = "euler"
    seed: int = 0
    temperature: float = 0.0
    grid: str = "uniform"
    shift: float | None = None

    def time_grid(self) -> list[float]:
        return make_grid(self.grid, self.steps, self.shift)


@dataclass
class Result:
    image: np.ndarray  # [4H, 4W, 3] float32 in [0, 1]
    network_calls: int


@dataclass
class UpscaleStats:
    network_calls: int = 0  # in all, over every tile batch
    tiles: int = 0
    shape: tuple[int, int, int] = field(default=(0, 0, 0))  # output [H, W, channels]


# Called with (first output row, rows [n, width, channels] uint8 or uint16).
PixelSink = Callable[[int, np.ndarray], None]


def quantize(values01: np.ndarray, bit_depth: int) -> np.ndarray:
    """Clamp values to [0, 1] and round them to 8- or 16-bit integers; NaN becomes 0.

    The same rounding as `kernels.state_to_image`: floor(v * max + 0.5).
    """
    max_value = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    values = np.nan_to_num(np.asarray(values01, dtype=np.float32), nan=0.0)
    scaled = np.clip(values, 0.0, 1.0) * np.float32(max_value) + np.float32(0.5)
    return np.floor(scaled).astype(dtype)


class Upscaler:
    """Run the flow ODE around a network backend.

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
        x, calls = sampler(self.velocity_fn(cond), x, settings.time_grid())
        residual_scale = np.float32(self.info.residual_scale)
        image = flow.image_from_data(x, cond, self.info.target, residual_scale)
        return image.astype(np.float32), calls

    def _sample_tiles(
        self,
        color: RegionUpsampler,
        height: int,
        width: int,
        settings: SampleSettings,
        tiling: TileSettings,
        emit: Callable[[int, np.ndarray], None],
    ) -> tuple[int, int]:
        return sample_tiled(
            lambda cond, noise: self.sample(cond, noise, settings),
            color,
            height,
            width,
            settings.seed,
            settings.temperature != 0,
            tiling,
            self.info.size_multiple,
            emit,
        )

    def upscale(
        self, lr01: np.ndarray, settings: SampleSettings, tiling: TileSettings | None = None
    ) -> Result:
        """Super-resolve an [h, w, 3] RGB float image in [0, 1] by the model's scale.

        The image runs whole unless `tiling` sets a tile, and the output is held in
        memory as [scale·h, scale·w, 3] float32 in [0, 1].
        """
        if lr01.ndim != 3 or lr01.shape[2] != 3:
            raise ValueError(f"upscale expects an [h, w, 3] RGB array, got shape {lr01.shape}")
        scale = self.info.scale
        height, width = lr01.shape[0] * scale, lr01.shape[1] * scale
        image = np.empty((height, width, 3), dtype=np.float32)

        def keep(row0: int, rows: np.ndarray) -> None:
            rgb = np.clip(flow.from_network(rows), 0.0, 1.0)
            image[row0 : row0 + rows.shape[1]] = rgb.transpose(1, 2, 0)

        color = RegionUpsampler(np.asarray(lr01, dtype=np.float32), 1.0, scale)
        calls, _ = self._sample_tiles(
            color, height, width, settings, tiling or TileSettings(), keep
        )
        return Result(image, calls)

    def upscale_image(
        self, image: LRImage, settings: SampleSettings, tiling: TileSettings, sink: PixelSink
    ) -> UpscaleStats:
        """Super-resolve a decoded image and pass its output rows to `sink`, top to bottom.

        The rows are [n, width, channels] in the image's own kind. Grayscale gives 1
        channel and colour 3, plus 1 for alpha when the input has it. They are uint16
        for 16-bit inputs, else uint8.
        """
        scale = self.info.scale
        height, width = image.height * scale, image.width * scale
        color = RegionUpsampler(image.color, image.max_value, scale)
        alpha = None
        if image.alpha is not None:
            alpha = RegionUpsampler(image.alpha[..., None], image.max_value, scale)
        channels = (1 if image.grayscale else 3) + (alpha is not None)
        dtype = np.uint16 if image.bit_depth == 16 else np.uint8

        def encode(row0: int, rows: np.ndarray) -> None:
            if not image.grayscale and alpha is None:
                sink(row0, kernels.state_to_image(rows, dtype=dtype))
                return
            rgb = flow.from_network(rows).transpose(1, 2, 0)  # [n, width, 3] in [0, 1]
            if image.grayscale:
                planes = [np.tensordot(np.clip(rgb, 0.0, 1.0), BT601_LUMA, axes=1)[..., None]]
            else:
                planes = [rgb]
            if alpha is not None:
                planes.append(alpha.region(row0, row0 + rows.shape[1], 0, width))
            values = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)
            sink(row0, quantize(values, image.bit_depth))

        calls, tiles = self._sample_tiles(color, height, width, settings, tiling, encode)
        return UpscaleStats(calls, tiles, (height, width, channels))
