"""Tiled sampling: split an output into overlapping tiles, sample each, blend them.

Coordinates are output pixels (the LR times the scale). Inside a tile, the network
gets the same inputs as in the untiled run:
- the conditioning is the crop of the whole-image bicubic upsample, because
  `RegionUpsampler` slices the whole image's weight tables and so reads the LR
  context that the bicubic taps reach;
- the noise is the crop of the whole-image noise field (`kernels.gaussian_noise` with
  the tile's row0 and col0).
Tiling therefore changes the result only where the network's receptive field crosses
a tile edge, and a feathered weight hides those seams in the overlaps.

Rows are released to the caller as soon as no later tile touches them, so memory is
bounded by one band of tiles and not by the image.

The noise, the blend and the conditioning come from `fmsr_infer.kernels`, which runs
the compiled kernels of cpp_ext when they are built and numpy otherwise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmsr_infer import flow, kernels
from fmsr_infer.model_info import ModelInfo
from fmsr_infer.resize import SCALE, upsample_tables

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 32
DEFAULT_MEMORY_BUDGET_MB = 1024
MIN_AUTO_TILE = 64
MAX_AUTO_TILE = 2048

# Bytes of working memory per network-input pixel besides the network's activations:
# about 16 RGB float32 planes (cond, noise, state, network output, the velocity and the
# image derived from it, Heun's predictor, the blend's temporaries).
_SAMPLER_BYTES_PER_PIXEL = 16 * 3 * 4
# Feature maps that ONNX Runtime's CPU provider keeps alive at once at each scale of
# UNetSR, fitted to the peak RSS of whole fmsr-infer runs (benchmarks/tiling_memory.py,
# ONNX Runtime 1.32 on a CPU) with base_channels 8 and 32.
_LIVE_FEATURE_MAPS = 8
# The value that `kernels.upsample_condition` divides each LR dtype by.
_KERNEL_LR_MAX = {
    np.dtype(np.uint8): 255.0,
    np.dtype(np.uint16): 65535.0,
    np.dtype(np.float32): 1.0,
}


@dataclass(frozen=True)
class Tile:
    """A rectangle of the output, [row0, row0 + height) x [col0, col0 + width)."""

    row0: int
    col0: int
    height: int
    width: int


@dataclass
class TileSettings:
    """How to split an output: `tile` is the side in output pixels, 0 for no tiling."""

    tile: int = 0
    overlap: int = DEFAULT_OVERLAP
    batch: int = 1


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    """Reflect-pad a [..., H, W] array at the bottom and right to multiples of `multiple`.

    Sides shorter than the padding are padded by repeating the edge. Returns the padded
    array and the padding added to H and W.
    """
    h, w = x.shape[-2:]
    pad_h = (-h) % multiple
    pad_w = (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, 0, 0
    widths = [(0, 0)] * (x.ndim - 2) + [(0, pad_h), (0, pad_w)]
    mode = "reflect" if h > pad_h and w > pad_w else "edge"
    return np.pad(x, widths, mode=mode), pad_h, pad_w


def network_bytes_per_pixel(info: ModelInfo) -> int:
    """Estimate the memory one network-input pixel costs during sampling, in bytes.

    NOTE: an estimate from UNetSR's widths (full, half and quarter resolution); the
    real use depends on ONNX Runtime's memory planner and the backend.
    """
    config = info.model_config or {}
    base = int(config.get("base_channels", 32))
    mult = list(config.get("channel_mult", (1, 2, 4)))
    widths = [base * m for m in mult]
    per_pixel = sum(width / 4**level for level, width in enumerate(widths))
    return int(4 * _LIVE_FEATURE_MAPS * per_pixel) + _SAMPLER_BYTES_PER_PIXEL


def fit_to_backend(settings: TileSettings, backend, multiple: int) -> TileSettings:
    """Shrink the tile and the batch to what the backend accepts, if it has a limit.

    Backends with a fixed input profile (TensorRT engines) give `max_shape` as
    (batch, height, width); a tile larger than it, or no tiling, would fail there.
    """
    max_shape = getattr(backend, "max_shape", None)
    if max_shape is None:
        return settings
    max_batch, max_height, max_width = max_shape
    limit = min(max_height, max_width) // multiple * multiple
    tile, batch = settings.tile, min(settings.batch, max_batch)
    if tile == 0 or tile > limit:
        log.info("tile %d px, the largest input the backend accepts (%s)", limit, max_shape)
        tile = limit
    overlap = min(settings.overlap, tile // 2)
    return TileSettings(tile=tile, overlap=overlap, batch=batch)


def tile_for_budget(info: ModelInfo, budget_mb: float, batch: int) -> int:
    """Return the largest square tile side whose batch fits in `budget_mb` MiB."""
    pixels = budget_mb * 2**20 / (network_bytes_per_pixel(info) * max(batch, 1))
    side = int(math.sqrt(pixels)) // info.size_multiple * info.size_multiple
    return max(MIN_AUTO_TILE, min(MAX_AUTO_TILE, side))


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering [0, length), `overlap` apart.

    The last tile ends at `length` exactly, so it may overlap its neighbour by more.
    One start (0) when the tile covers the whole length.
    """
    if tile <= 0 or length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def plan_tiles(height: int, width: int, settings: TileSettings, multiple: int) -> list[Tile]:
    """Split a height x width output into tiles, row by row (row0 ascending)."""
    tile = settings.tile
    if tile and tile % multiple:
        raise ValueError(f"tile side {tile} is not a multiple of the model's {multiple}")
    if tile and not 0 <= settings.overlap < tile // 2 + 1:
        raise ValueError(
            f"tile overlap {settings.overlap} must be in [0, {tile // 2}] for tile {tile}"
        )
    rows = axis_starts(height, tile, settings.overlap)
    cols = axis_starts(width, tile, settings.overlap)
    tile_h = min(height, tile) if tile else height
    tile_w = min(width, tile) if tile else width
    return [Tile(r, c, tile_h, tile_w) for r in rows for c in cols]


def feather(length: int, leading: bool, trailing: bool, ramp: int) -> np.ndarray:
    """1-D blend weight of a tile side: raised-cosine ramps of `ramp` pixels at the
    sides that overlap a neighbour, 1 elsewhere. Every value is > 0.
    """
    weight = np.ones(length, dtype=np.float32)
    ramp = min(ramp, length)
    if ramp <= 0:
        return weight
    rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp, dtype=np.float64) + 0.5) / ramp)
    rise = rise.astype(np.float32)
    if leading:
        weight[:ramp] = np.minimum(weight[:ramp], rise)
    if trailing:
        weight[length - ramp :] = np.minimum(weight[length - ramp :], rise[::-1])
    return weight


def tile_weight(tile: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    """[tile.height, tile.width] float32 blend weight; 1 at the image borders."""
    rows = feather(tile.height, tile.row0 > 0, tile.row0 + tile.height < height, overlap)
    cols = feather(tile.width, tile.col0 > 0, tile.col0 + tile.width < width, overlap)
    return rows[:, None] * cols[None, :]


class RegionUpsampler:
    """Bicubic upsample of an LR image, computed for any output region on its own.

    A region equals the crop of `resize.upsample` of the whole image, to float32
    rounding, because it uses the rows of the whole image's weight tables. So the LR
    pixels outside the region that the bicubic taps reach are read, and the edges are
    mirrored as in the whole image.
    """

    def __init__(self, lr: np.ndarray, max_value: float, scale: int):
        if lr.ndim != 3:
            raise ValueError(f"expected an [h, w, channels] LR array, got shape {lr.shape}")
        self.lr = lr
        self.max_value = np.float32(max_value)
        self.scale = scale
        self.row_w, self.row_i, self.col_w, self.col_i = upsample_tables(
            lr.shape[0], lr.shape[1], scale
        )
        # The compiled kernel reads only the LR pixels a region needs. Its numpy
        # fallback converts the whole LR to float64 on every call, so without the
        # extension the region is computed here from the LR pixels it needs.
        self.compiled = (
            scale == SCALE
            and _KERNEL_LR_MAX.get(lr.dtype) == float(max_value)
            and kernels.extension_available()
        )

    def condition(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Return the region in network units, planar [channels, rows, cols] float32."""
        if self.compiled:
            return kernels.upsample_condition(
                self.lr, out_row0=row0, out_col0=col0, out_h=row1 - row0, out_w=col1 - col0
            )
        return flow.to_network(self.region(row0, row1, col0, col1)).transpose(2, 0, 1)

    def region(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Return the upsample on output rows [row0, row1) and columns [col0, col1).

        Shape [row1 - row0, col1 - col0, channels], float32, LR values divided by
        `max_value`, unclamped (bicubic overshoots [0, 1] at edges).
        """
        row_w, row_i = self.row_w[row0:row1], self.row_i[row0:row1]
        col_w, col_i = self.col_w[col0:col1], self.col_i[col0:col1]
        r_lo, r_hi = int(row_i.min()), int(row_i.max()) + 1
        c_lo, c_hi = int(col_i.min()), int(col_i.max()) + 1
        patch = self.lr[r_lo:r_hi, c_lo:c_hi].astype(np.float32)
        if self.max_value != 1:
            patch /= self.max_value
        row_i = row_i - r_lo
        col_i = col_i - c_lo

        # Height first, then width, as MATLAB's imresize; one tap at a time, so each
        # output value is summed in the same order whatever the region.
        rows = row_w[:, 0, None, None] * patch[row_i[:, 0]]
        for tap in range(1, row_w.shape[1]):
            rows += row_w[:, tap, None, None] * patch[row_i[:, tap]]
        out = col_w[None, :, 0, None] * rows[:, col_i[:, 0]]
        for tap in range(1, col_w.shape[1]):
            out += col_w[None, :, tap, None] * rows[:, col_i[:, tap]]
        return out


class BlendBuffer:
    """Full-width rows of the output where weighted tiles accumulate.

    It keeps rows [row0, row0 + accum.shape[1]) only. `release` hands finished rows out
    and drops them, so the buffer spans one band of tiles plus its overlap.
    """

    def __init__(self, channels: int, width: int):
        self.channels = channels
        self.width = width
        self.row0 = 0
        self.accum = np.zeros((channels, 0, width), dtype=np.float32)
        self.weight_sum = np.zeros((0, width), dtype=np.float32)

    def add(self, tile: Tile, values: np.ndarray, weight: np.ndarray) -> None:
        """Add values [channels, tile.height, tile.width] times weight into the buffer."""
        end = tile.row0 + tile.height
        held_end = self.row0 + self.weight_sum.shape[0]
        if tile.row0 < self.row0:
            raise ValueError(f"tile at row {tile.row0} is above released row {self.row0}")
        if end > held_end:
            grow = end - held_end
            self.accum = np.concatenate(
                [self.accum, np.zeros((self.channels, grow, self.width), np.float32)], axis=1
            )
            self.weight_sum = np.concatenate(
                [self.weight_sum, np.zeros((grow, self.width), np.float32)], axis=0
            )
        row = tile.row0 - self.row0
        kernels.blend_tile(self.accum, self.weight_sum, values, weight, row, tile.col0)

    def release(self, until_row: int) -> tuple[int, np.ndarray]:
        """Return (first row, normalized [channels, n, width]) for rows below `until_row`."""
        n = max(0, min(until_row - self.row0, self.weight_sum.shape[0]))
        first = self.row0
        if n == 0:
            return first, self.accum[:, :0]
        weight = self.weight_sum[:n]
        if not np.all(weight > 0):
            raise AssertionError(f"output rows {first} to {first + n} are not covered by a tile")
        values = kernels.normalize_blend(self.accum[:, :n], weight)

        # Copy the rows still in progress, so that the released ones are freed.
        self.accum = self.accum[:, n:].copy()
        self.weight_sum = self.weight_sum[n:].copy()
        self.row0 += n
        return first, values


# Called with (first output row, rows [3, n, width] float32 in network units, unclamped).
RowSink = Callable[[int, np.ndarray], None]
# Called with (cond [N, 3, H, W], noise [N, 3, H, W]); returns (image, network calls).
SampleFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, int]]


def sample_tiled(
    sample: SampleFn,
    color: RegionUpsampler,
    height: int,
    width: int,
    seed: int,
    draw_noise: bool,
    settings: TileSettings,
    multiple: int,
    emit: RowSink,
) -> tuple[int, int]:
    """Sample a height x width output tile by tile and emit its rows top to bottom.

    `color` gives the conditioning (1 or 3 channels; 1 is repeated to RGB). `sample`
    runs the ODE on a batch in network units. With `draw_noise` False the noise is
    zeros (temperature 0 makes it so anyway, without computing the field).

    Returns (network calls in all, number of tiles).
    """
    tiles = plan_tiles(height, width, settings, multiple)
    padded_h = tiles[0].height + (-tiles[0].height) % multiple
    padded_w = tiles[0].width + (-tiles[0].width) % multiple
    batch_size = max(1, settings.batch)
    buffer = BlendBuffer(3, width)
    total_calls = 0
    log.debug(
        "%dx%d output: %d tiles of %dx%d, overlap %d, batch %d",
        width, height, len(tiles), tiles[0].width, tiles[0].height, settings.overlap,
        batch_size,
    )

    report_every = max(1, len(tiles) // 10)
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        if len(tiles) > 1 and (start // batch_size) % report_every == 0:
            log.debug("tile %d of %d", start + 1, len(tiles))

        # Conditioning and noise of each tile: crops of the whole-image ones.
        cond_batch = np.empty((len(batch), 3, padded_h, padded_w), dtype=np.float32)
        noise_batch = np.zeros_like(cond_batch)
        for index, tile in enumerate(batch):
            cond = color.condition(
                tile.row0, tile.row0 + tile.height, tile.col0, tile.col0 + tile.width
            )
            cond_batch[index] = pad_to_multiple(cond, multiple)[0]  # 1 channel broadcasts
            if draw_noise:
                kernels.gaussian_noise(
                    seed, 3, padded_h, padded_w, tile.row0, tile.col0, out=noise_batch[index]
                )
            del cond

        # The ODE on the whole batch of tiles.
        images, calls = sample(cond_batch, noise_batch)
        total_calls += calls
        del cond_batch, noise_batch

        # Blend each tile, then hand out the rows no later tile reaches.
        for tile, image in zip(batch, images):
            values = image[:, : tile.height, : tile.width]
            buffer.add(tile, values, tile_weight(tile, height, width, settings.overlap))
        next_row = tiles[start + batch_size].row0 if start + batch_size < len(tiles) else height
        first, rows = buffer.release(next_row)
        if rows.shape[1]:
            emit(first, rows)
    return total_calls, len(tiles)
