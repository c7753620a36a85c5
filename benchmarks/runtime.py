"""End-to-end runs of the fmsr runtime, as fmsr-infer makes them; imports no torch.

The memory probe imports this module in a process without torch, so it measures the
runtime's memory alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunSettings:
    """One end-to-end configuration; `tile` is the tile side in output pixels, 0 for none."""

    sampler: str
    steps: int
    seed: int
    temperature: float
    tile: int = 0


def tiling_unavailable_reason() -> str | None:
    """Return why the pipeline cannot tile, or None when it can."""
    try:
        from fmsr_infer.tiling import TileSettings  # noqa: F401
    except ImportError as exc:
        return f"fmsr_infer has no tiling option ({exc})"
    return None


def runtime_upscale(upscaler, lr_u8: np.ndarray, run: RunSettings, keep_output: bool = True):
    """Super-resolve an [h, w, 3] uint8 image with the runtime's Upscaler.

    Returns (the [4h, 4w, 3] uint8 output, or None when `keep_output` is False, and the
    number of network calls). With `keep_output` False the output rows are dropped as
    they arrive, as a streaming PNG writer drops them once encoded, so that memory
    reflects the pipeline and not a full output buffer.
    """
    from fmsr_infer.pipeline import SampleSettings, Upscaler

    settings = SampleSettings(
        steps=run.steps, sampler=run.sampler, seed=run.seed, temperature=run.temperature
    )
    if not hasattr(Upscaler, "upscale_image"):
        # Older pipeline: float image out, untiled; rounded as fmsr-infer rounds it.
        if run.tile:
            raise ValueError(f"tile {run.tile} requested, but {tiling_unavailable_reason()}")
        result = upscaler.upscale(lr_u8.astype(np.float32) / 255.0, settings)
        image = np.clip(np.floor(result.image * 255.0 + 0.5), 0, 255).astype(np.uint8)
        return (image if keep_output else None), result.network_calls

    from fmsr_infer.imageio import LRImage
    from fmsr_infer.tiling import TileSettings

    scale = upscaler.info.scale
    height, width = lr_u8.shape[0] * scale, lr_u8.shape[1] * scale
    output = np.empty((height, width, 3), np.uint8) if keep_output else None

    def sink(row0: int, rows: np.ndarray) -> None:
        if output is not None:
            output[row0 : row0 + rows.shape[0]] = rows

    image = LRImage(np.ascontiguousarray(lr_u8), None, "memory", "RGB")
    stats = upscaler.upscale_image(image, settings, TileSettings(tile=run.tile), sink)
    return output, stats.network_calls
