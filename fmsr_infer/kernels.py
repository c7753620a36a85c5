"""Fused kernels of the fmsr runtime: noise, conditioning upsample, ODE updates, output
mapping and tile blending, on numpy arrays.

Each function runs the compiled CPU module `fmsr_infer._ext` (cpp_ext/, C++17 with
OpenMP) when it is built, and otherwise a numpy reference of the same arithmetic, with
one logged warning on the first fallback. `backend="numpy"` or `backend="cpp"` picks
one explicitly (tests and benchmarks compare the two). The numpy noise is bit-exact
with the compiled one. The other kernels compute the same float32 operations in the
same order, except the upsample, whose reference is float64 and which agrees to 1e-6.

Conventions: t = 0 is noise and t = 1 the image, x_t = (1 - t) x_0 + t x_1, velocity
v = x_1 - x_0. The state x is float32 in network units [-1, 1] whatever the network's
dtype; network outputs (v, x1_hat) may be float32 or float16. Images are interleaved
HWC; network tensors are planar CHW, optionally with a leading batch axis.

The CUDA kernels take raw device pointers instead of arrays; `load_cuda_kernels`
returns their module, `fmsr_infer._ext_cuda`.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Sequence

import numpy as np

from fmsr_infer import noise as _noise
from fmsr_infer import resize

log = logging.getLogger(__name__)

BACKENDS = ("cpp", "numpy")

_UNLOADED = object()
_extension = _UNLOADED

_PIXEL_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_LR_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
_NETWORK_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


# ---------------------------------------------------------------------------------
# Backend selection


def _load_extension():
    """Return the compiled module, or None after logging why it is unavailable once."""
    global _extension
    if _extension is _UNLOADED:
        try:
            from fmsr_infer import _ext
        except ImportError as error:
            log.warning(
                "fmsr_infer._ext is not available (%s); the kernels fall back to numpy, "
                "which is slower (benchmarks/kernels.py measures how much). Build it "
                "with `python setup.py build_ext --inplace` or `pip install .`.",
                error,
            )
            _ext = None
        _extension = _ext
    return _extension


def extension_available() -> bool:
    """Return whether the compiled CPU kernels `fmsr_infer._ext` are importable."""
    return _load_extension() is not None


def _backend(backend: str | None):
    if backend is None:
        return _load_extension() or _NUMPY
    if backend == "numpy":
        return _NUMPY
    if backend == "cpp":
        module = _load_extension()
        if module is None:
            raise RuntimeError(
                "backend='cpp' requested but fmsr_infer._ext is not built; run "
                "`python setup.py build_ext --inplace`"
            )
        return module
    raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")


def load_cuda_kernels() -> types.ModuleType:
    """Import and return `fmsr_infer._ext_cuda`, the CUDA kernels.

    Its functions take device pointers and a CUDA stream handle as Python ints (for
    torch: `tensor.data_ptr()` and `torch.cuda.current_stream().cuda_stream`; for
    cuda-python: `int(pointer)` and `int(stream)`), enqueue one kernel on that stream
    and raise RuntimeError when the launch fails. `help(module)` lists them.

    Raises:
        ImportError: the module was not built (no nvcc at build time, or FMSR_CUDA=0).
    """
    try:
        from fmsr_infer import _ext_cuda
    except ImportError as error:
        raise ImportError(
            f"fmsr_infer._ext_cuda is not available ({error}); rebuild with nvcc on PATH "
            "(or CUDA_HOME set) and FMSR_CUDA=1 to require it"
        ) from error
    return _ext_cuda


# ---------------------------------------------------------------------------------
# Argument checks


def _require(array, name: str, dtypes, ndim: int | None = None, writeable: bool = False):
    """Check an array argument and return it C-contiguous.

    Read-only inputs are copied when not C-contiguous; arrays written in place must
    already be C-contiguous, since a copy would silently drop the result.
    """
    if not isinstance(array, np.ndarray):
        if writeable:
            raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
        array = np.asarray(array)
    if array.dtype not in [np.dtype(d) for d in dtypes]:
        allowed = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"{name} must be {allowed}, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if writeable:
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} is written in place and must be C-contiguous")
        if not array.flags.writeable:
            raise ValueError(f"{name} is written in place and must be writeable")
        return array
    return np.ascontiguousarray(array)


def _require_like(array, name: str, like: np.ndarray, like_name: str, dtypes):
    array = _require(array, name, dtypes)
    if array.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {like.shape}, got {array.shape}"
        )
    return array


def _output(out, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Return `out` checked against shape and dtype, or a new array when it is None."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    out = _require(out, name, [dtype], writeable=True)
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    return out


def _check_floor(floor: float) -> float:
    floor = float(floor)
    if not floor > 0.0:
        raise ValueError(f"floor must be positive, got {floor}")
    return floor


# ---------------------------------------------------------------------------------
# Noise


def gaussian_noise_batch(
    seeds: Sequence[int],
    channels: int,
    height: int,
    width: int,
    row0: int = 0,
    col0: int = 0,
    *,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Draw the tile [row0:row0+height, col0:col0+width] of each seed's noise field.

    The field is defined in `fmsr_infer.noise`: each value depends only on (seed,
    channel, row, col), so a tile equals the crop of the full field, and row0 and col0
    may be negative (rows and columns wrap modulo 2^32).

    Returns:
        float32 [len(seeds), channels, height, width], standard normal values (`out` if
        given).
    """
    seeds = [_noise.check_seed(seed) for seed in seeds]
    for name, value in (("channels", channels), ("height", height), ("width", width)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    out = _output(out, "out", (len(seeds), channels, height, width), np.float32)
    _backend(backend).gaussian_noise(out, seeds, int(row0), int(col0))
    return out


def gaussian_noise(
    seed: int,
    channels: int,
    height: int,
    width: int,
    row0: int = 0,
    col0: int = 0,
    *,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Draw the tile [row0:row0+height, col0:col0+width] of the noise field of `seed`.

    Returns:
        float32 [channels, height, width] (`out` if given), like `gaussian_noise_batch`.
    """
    batch_out = (
        None if out is None else _output(out, "out", (channels, height, width), np.float32)[None]
    )
    return gaussian_noise_batch(
        [seed], channels, height, width, row0, col0, out=batch_out, backend=backend
    )[0]


# ---------------------------------------------------------------------------------
# Conditioning upsample


@functools.lru_cache(maxsize=32)
def upsample_tables(in_h: int, in_w: int) -> tuple[np.ndarray, ...]:
    """Return `resize.upsample_tables(in_h, in_w)` C-contiguous, cached and read-only."""
    tables = tuple(np.ascontiguousarray(table) for table in resize.upsample_tables(in_h, in_w))
    for table in tables:
        table.setflags(write=False)
    return tables


def upsample_condition(
    lr: np.ndarray,
    *,
    out_row0: int = 0,
    out_col0: int = 0,
    out_h: int | None = None,
    out_w: int | None = None,
    dtype=np.float32,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Upsample an LR image 4x into the network's conditioning input, in network units.

    Computes `2 * resize.upsample(lr / max) - 1` (MATLAB-style bicubic, rows first, then
    columns, with the tables of `resize.upsample_tables`), transposed to planar CHW, for
    the output rows [out_row0, out_row0 + out_h) and columns [out_col0, out_col0 + out_w)
    only. A tile computed this way equals the crop of the full upsample.

    Args:
        lr: interleaved [H, W], [H, W, C] or [N, H, W, C]; uint8, uint16 or float32,
            scaled to [0, 1] by 255, 65535 or 1.
        out_h, out_w: tile size, default the rest of the 4H x 4W output.
        dtype: float32 or float16, the network's input dtype.
        out: optional destination, for example the network's input buffer.

    Returns:
        [C, out_h, out_w], or [N, C, out_h, out_w] for 4-D input, of `dtype`.
    """
    lr = _require(lr, "lr", list(_LR_SCALE))
    if lr.ndim == 2:
        lr4 = lr[None, :, :, None]
    elif lr.ndim == 3:
        lr4 = lr[None]
    elif lr.ndim == 4:
        lr4 = lr
    else:
        raise ValueError(f"lr must be [H, W], [H, W, C] or [N, H, W, C], got shape {lr.shape}")
    batch, in_h, in_w, channels = lr4.shape
    if in_h < 1 or in_w < 1 or channels < 1:
        raise ValueError(f"lr must be non-empty, got shape {lr.shape}")
    full_h, full_w = resize.SCALE * in_h, resize.SCALE * in_w
    out_h = full_h - out_row0 if out_h is None else out_h
    out_w = full_w - out_col0 if out_w is None else out_w
    if not (0 <= out_row0 and 0 <= out_h and out_row0 + out_h <= full_h):
        raise ValueError(
            f"rows [{out_row0}, {out_row0 + out_h}) are outside the upsample's {full_h} rows"
        )
    if not (0 <= out_col0 and 0 <= out_w and out_col0 + out_w <= full_w):
        raise ValueError(
            f"columns [{out_col0}, {out_col0 + out_w}) are outside the upsample's {full_w} columns"
        )
    dtype = np.dtype(dtype)
    if dtype not in _NETWORK_DTYPES:
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")

    shape = (batch, channels, out_h, out_w)
    if out is None:
        out4 = np.empty(shape, dtype=dtype)
    else:
        out4 = _output(out, "out", shape if lr.ndim == 4 else shape[1:], dtype)
        out4 = out4 if lr.ndim == 4 else out4[None]
    row_weights, row_indices, col_weights, col_indices = upsample_tables(in_h, in_w)
    _backend(backend).upsample(
        lr4, row_weights, row_indices, col_weights, col_indices, out4, out_row0, out_col0
    )
    return out4 if lr.ndim == 4 else out4[0]


# ---------------------------------------------------------------------------------
# ODE state updates


def euler_step(x: np.ndarray, v: np.ndarray, dt: float, *, backend: str | None = None):
    """Apply the Euler step x += dt * v in place and return x.

    x is the float32 state; v the velocity, float32 or float16, of x's shape.
    """
    x = _require(x, "x", [np.float32], writeable=True)
    v = _require_like(v, "v", x, "x", _NETWORK_DTYPES)
    _backend(backend).euler_step(x, v, float(dt))
    return x


def heun_predict(
    x: np.ndarray,
    v: np.ndarray,
    dt: float,
    *,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Return Heun's predictor x_pred = x + dt * v (in `out` if given); x is unchanged."""
    x = _require(x, "x", [np.float32])
    v = _require_like(v, "v", x, "x", _NETWORK_DTYPES)
    out = _output(out, "out", x.shape, np.float32)
    _backend(backend).heun_predict(x, v, out, float(dt))
    return out


def heun_correct(
    x: np.ndarray, v: np.ndarray, v_pred: np.ndarray, dt: float, *, backend: str | None = None
):
    """Apply Heun's corrector x += 0.5 * dt * (v + v_pred) in place and return x.

    v is the velocity at (x, t), v_pred the one at (x_pred, t + dt), both of one dtype.
    """
    x = _require(x, "x", [np.float32], writeable=True)
    v = _require_like(v, "v", x, "x", _NETWORK_DTYPES)
    v_pred = _require_like(v_pred, "v_pred", x, "x", [v.dtype])
    _backend(backend).heun_correct(x, v, v_pred, float(dt))
    return x


def euler_step_x1(
    x: np.ndarray,
    x1_hat: np.ndarray,
    t: float,
    dt: float,
    floor: float,
    *,
    backend: str | None = None,
):
    """Apply an Euler step from an x1 prediction in place and return x.

    The velocity is v = (x1_hat - x) / max(1 - t, floor), computed inside the update,
    so x += dt / max(1 - t, floor) * (x1_hat - x). floor > 0 bounds the division as
    t reaches 1.
    """
    floor = _check_floor(floor)
    x = _require(x, "x", [np.float32], writeable=True)
    x1_hat = _require_like(x1_hat, "x1_hat", x, "x", _NETWORK_DTYPES)
    _backend(backend).euler_step_x1(x, x1_hat, float(t), float(dt), floor)
    return x


def heun_predict_x1(
    x: np.ndarray,
    x1_hat: np.ndarray,
    t: float,
    dt: float,
    floor: float,
    *,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Return Heun's predictor from an x1 prediction, x + dt * (x1_hat - x) / max(1 - t, floor)."""
    floor = _check_floor(floor)
    x = _require(x, "x", [np.float32])
    x1_hat = _require_like(x1_hat, "x1_hat", x, "x", _NETWORK_DTYPES)
    out = _output(out, "out", x.shape, np.float32)
    _backend(backend).heun_predict_x1(x, x1_hat, out, float(t), float(dt), floor)
    return out


def heun_correct_x1(
    x: np.ndarray,
    x1_hat: np.ndarray,
    x_pred: np.ndarray,
    x1_hat_pred: np.ndarray,
    t: float,
    dt: float,
    floor: float,
    *,
    backend: str | None = None,
):
    """Apply Heun's corrector from x1 predictions in place and return x.

    x += 0.5 * dt * (v + v_pred) with v = (x1_hat - x) / max(1 - t, floor) and
    v_pred = (x1_hat_pred - x_pred) / max(1 - (t + dt), floor).
    """
    floor = _check_floor(floor)
    x = _require(x, "x", [np.float32], writeable=True)
    x1_hat = _require_like(x1_hat, "x1_hat", x, "x", _NETWORK_DTYPES)
    x_pred = _require_like(x_pred, "x_pred", x, "x", [np.float32])
    x1_hat_pred = _require_like(x1_hat_pred, "x1_hat_pred", x, "x", [x1_hat.dtype])
    _backend(backend).heun_correct_x1(x, x1_hat, x_pred, x1_hat_pred, float(t), float(dt), floor)
    return x


def midpoint_step_x1(
    x: np.ndarray,
    x_mid: np.ndarray,
    x1_hat_mid: np.ndarray,
    t: float,
    dt: float,
    floor: float,
    *,
    backend: str | None = None,
):
    """Apply the midpoint method's full step from an x1 prediction in place and return x.

    x += dt * v_mid with v_mid = (x1_hat_mid - x_mid) / max(1 - t_mid, floor), the
    velocity at the midpoint t_mid = t + dt / 2 of the interval [t, t + dt]. x_mid is
    the float32 half step, for example `heun_predict_x1(x, x1_hat, t, dt / 2, floor)`,
    and x1_hat_mid the network's prediction there, float32 or float16.
    """
    floor = _check_floor(floor)
    x = _require(x, "x", [np.float32], writeable=True)
    x_mid = _require_like(x_mid, "x_mid", x, "x", [np.float32])
    x1_hat_mid = _require_like(x1_hat_mid, "x1_hat_mid", x, "x", _NETWORK_DTYPES)
    _backend(backend).midpoint_step_x1(x, x_mid, x1_hat_mid, float(t), float(dt), floor)
    return x


# ---------------------------------------------------------------------------------
# Output


def state_to_image(
    x: np.ndarray,
    upsample: np.ndarray | None = None,
    residual_scale: float = 1.0,
    *,
    dtype=np.uint8,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Map the final state to an interleaved integer image in one pass.

    The image in network units is y = upsample + x / residual_scale for a residual
    target (`upsample` given, as returned by `upsample_condition`), else y = x. Each
    value becomes floor(clamp((y + 1) / 2, 0, 1) * max + 0.5) with max 255 or 65535;
    NaN becomes 0.

    Args:
        x: float32 [C, H, W] or [N, C, H, W] in network units.
        upsample: float32 or float16 of x's shape, or None.
        residual_scale: divides x for a residual target; must stay 1.0 without one.
        dtype: uint8 or uint16.

    Returns:
        [H, W, C], or [N, H, W, C] for 4-D x, of `dtype`.
    """
    x = _require(x, "x", [np.float32])
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be [C, H, W] or [N, C, H, W], got shape {x.shape}")
    residual_scale = float(residual_scale)
    if upsample is None:
        if residual_scale != 1.0:
            raise ValueError(
                f"residual_scale={residual_scale} has no effect without upsample; pass "
                "the upsample for a residual target or leave residual_scale at 1.0"
            )
    else:
        upsample = _require_like(upsample, "upsample", x, "x", _NETWORK_DTYPES)
        if residual_scale == 0.0 or not np.isfinite(residual_scale):
            raise ValueError(f"residual_scale must be finite and non-zero, got {residual_scale}")
    dtype = np.dtype(dtype)
    if dtype not in _PIXEL_MAX:
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")

    x4 = x if x.ndim == 4 else x[None]
    upsample4 = None if upsample is None else upsample.reshape(x4.shape)
    batch, channels, height, width = x4.shape
    shape = (batch, height, width, channels)
    out4 = _output(out, "out", shape if x.ndim == 4 else shape[1:], dtype)
    out4 = out4 if x.ndim == 4 else out4[None]
    _backend(backend).state_to_image(x4, upsample4, residual_scale, out4)
    return out4 if x.ndim == 4 else out4[0]


# ---------------------------------------------------------------------------------
# Tile blend


def blend_tile(
    accum: np.ndarray,
    weight_sum: np.ndarray,
    tile: np.ndarray,
    weight: np.ndarray,
    row0: int,
    col0: int,
    *,
    backend: str | None = None,
) -> None:
    """Accumulate a weighted tile into a blend, in place.

    accum[:, row0:row0+h, col0:col0+w] += tile * weight and
    weight_sum[row0:row0+h, col0:col0+w] += weight.

    Args:
        accum: float32 [C, H, W].
        weight_sum: float32 [H, W].
        tile: float32 or float16 [C, h, w], inside accum at (row0, col0).
        weight: float32 [h, w], the tile's feather mask.
    """
    accum = _require(accum, "accum", [np.float32], ndim=3, writeable=True)
    weight_sum = _require(weight_sum, "weight_sum", [np.float32], ndim=2, writeable=True)
    tile = _require(tile, "tile", _NETWORK_DTYPES, ndim=3)
    weight = _require(weight, "weight", [np.float32], ndim=2)
    channels, height, width = accum.shape
    _, tile_h, tile_w = tile.shape
    if weight_sum.shape != (height, width):
        raise ValueError(f"weight_sum must have shape {(height, width)}, got {weight_sum.shape}")
    if tile.shape[0] != channels:
        raise ValueError(f"tile must have {channels} channels like accum, got shape {tile.shape}")
    if weight.shape != (tile_h, tile_w):
        raise ValueError(f"weight must have shape {(tile_h, tile_w)}, got {weight.shape}")
    if row0 < 0 or col0 < 0 or row0 + tile_h > height or col0 + tile_w > width:
        raise ValueError(
            f"tile {tile.shape} at ({row0}, {col0}) is outside the accumulator {accum.shape}"
        )
    _backend(backend).blend_tile(accum, weight_sum, tile, weight, int(row0), int(col0))


def normalize_blend(
    accum: np.ndarray,
    weight_sum: np.ndarray,
    *,
    out: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Return accum / weight_sum, float32 [C, H, W], with 0 where weight_sum <= 0.

    `out` may be `accum` itself to normalize in place.
    """
    accum = _require(accum, "accum", [np.float32], ndim=3)
    weight_sum = _require(weight_sum, "weight_sum", [np.float32], ndim=2)
    if weight_sum.shape != accum.shape[1:]:
        raise ValueError(f"weight_sum must have shape {accum.shape[1:]}, got {weight_sum.shape}")
    out = _output(out, "out", accum.shape, np.float32)
    _backend(backend).normalize_blend(accum, weight_sum, out)
    return out


# ---------------------------------------------------------------------------------
# numpy reference: the same functions and signatures as fmsr_infer._ext, writing into
# the arrays they are given. The public functions above have already checked them.


def _numpy_gaussian_noise(out, seeds, row0, col0):
    _, channels, height, width = out.shape
    out[...] = _noise.gaussian_noise_batch(seeds, channels, height, width, row0, col0)


# Output rows per step of the numpy upsample, which bounds its float64 temporaries to
# about rows * width * taps * channels * 8 bytes (50 MB at 256 rows, 4096 columns, 3
# channels).
_NUMPY_UPSAMPLE_ROWS = 256


def _numpy_upsample(
    lr, row_weights, row_indices, col_weights, col_indices, out, out_row0, out_col0
):
    _, _, out_h, out_w = out.shape
    cols = slice(out_col0, out_col0 + out_w)
    col_taps_weights = col_weights[cols].astype(np.float64)
    col_taps_indices = col_indices[cols]
    lr01 = lr.astype(np.float64) / _LR_SCALE[lr.dtype]  # [N, H, W, C]

    # Rows first, then columns, in float64 like resize.imresize.
    for start in range(0, out_h, _NUMPY_UPSAMPLE_ROWS):
        stop = min(start + _NUMPY_UPSAMPLE_ROWS, out_h)
        rows = slice(out_row0 + start, out_row0 + stop)
        row_taps = lr01[:, row_indices[rows]]  # [N, rows, P, W, C]
        by_rows = np.einsum("yp,nypwc->nywc", row_weights[rows].astype(np.float64), row_taps)
        col_taps = by_rows[:, :, col_taps_indices]  # [N, rows, w, Q, C]
        full = np.einsum("xq,nyxqc->nyxc", col_taps_weights, col_taps)
        out[:, :, start:stop] = (2.0 * full - 1.0).transpose(0, 3, 1, 2)


def _as_float32(array):
    return array.astype(np.float32, copy=False)


def _numpy_euler_step(x, v, dt):
    x += np.float32(dt) * _as_float32(v)


def _numpy_heun_predict(x, v, x_pred, dt):
    np.add(x, np.float32(dt) * _as_float32(v), out=x_pred)


def _numpy_heun_correct(x, v, v_pred, dt):
    x += np.float32(0.5 * dt) * (_as_float32(v) + _as_float32(v_pred))


def _x1_rate(t, floor):
    return np.float32(1.0 / max(1.0 - t, floor))


def _numpy_euler_step_x1(x, x1_hat, t, dt, floor):
    x += np.float32(dt / max(1.0 - t, floor)) * (_as_float32(x1_hat) - x)


def _numpy_heun_predict_x1(x, x1_hat, x_pred, t, dt, floor):
    scale = np.float32(dt / max(1.0 - t, floor))
    np.add(x, scale * (_as_float32(x1_hat) - x), out=x_pred)


def _numpy_heun_correct_x1(x, x1_hat, x_pred, x1_hat_pred, t, dt, floor):
    v = _x1_rate(t, floor) * (_as_float32(x1_hat) - x)
    v_pred = _x1_rate(t + dt, floor) * (_as_float32(x1_hat_pred) - x_pred)
    x += np.float32(0.5 * dt) * (v + v_pred)


def _numpy_midpoint_step_x1(x, x_mid, x1_hat_mid, t, dt, floor):
    t_mid = t + 0.5 * dt
    x += np.float32(dt / max(1.0 - t_mid, floor)) * (_as_float32(x1_hat_mid) - x_mid)


def _numpy_state_to_image(x, upsample, residual_scale, out):
    y = x if upsample is None else _as_float32(upsample) + x / np.float32(residual_scale)
    unit = (y + np.float32(1.0)) * np.float32(0.5)
    unit = np.where(unit > 0, unit, np.float32(0.0))  # also maps NaN to 0
    unit = np.where(unit < 1, unit, np.float32(1.0))
    pixels = np.floor(unit * np.float32(_PIXEL_MAX[out.dtype]) + np.float32(0.5))
    out[...] = pixels.astype(out.dtype).transpose(0, 2, 3, 1)


def _numpy_blend_tile(accum, weight_sum, tile, weight, row0, col0):
    tile_h, tile_w = weight.shape
    rows = slice(row0, row0 + tile_h)
    cols = slice(col0, col0 + tile_w)
    accum[:, rows, cols] += _as_float32(tile) * weight
    weight_sum[rows, cols] += weight


def _numpy_normalize_blend(accum, weight_sum, out):
    covered = weight_sum > 0
    quotient = accum / np.where(covered, weight_sum, np.float32(1.0))
    out[...] = np.where(covered, quotient, np.float32(0.0))


_NUMPY = types.SimpleNamespace(
    gaussian_noise=_numpy_gaussian_noise,
    upsample=_numpy_upsample,
    euler_step=_numpy_euler_step,
    heun_predict=_numpy_heun_predict,
    heun_correct=_numpy_heun_correct,
    euler_step_x1=_numpy_euler_step_x1,
    heun_predict_x1=_numpy_heun_predict_x1,
    heun_correct_x1=_numpy_heun_correct_x1,
    midpoint_step_x1=_numpy_midpoint_step_x1,
    state_to_image=_numpy_state_to_image,
    blend_tile=_numpy_blend_tile,
    normalize_blend=_numpy_normalize_blend,
)
