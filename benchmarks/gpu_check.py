"""Check and time the CUDA kernels of fmsr_infer._ext_cuda on a GPU.

Usage:
    python benchmarks/gpu_check.py [--skip-build] [--sizes 256 1024] [--output FILE]

Steps:
1. Fails at once (exit 2) without torch, without a CUDA device, or without nvcc when a
   build is needed.
2. Builds the extensions in place with FMSR_CUDA=1 (`python setup.py build_ext
   --inplace`), unless --skip-build.
3. Checks every CUDA kernel on random inputs of odd shapes (1x1, 3x5, 37x53, batch 3)
   against torch on the same GPU, and against the numpy reference of
   fmsr_infer.kernels: the noise must equal it bit for bit, the other kernels must
   agree with torch to 1e-6 relative (integer images to one level), and whether they
   also equal the numpy reference exactly is reported.
4. Times each kernel and its torch equivalent at the given output sides (3 channels)
   with CUDA events, and prints a markdown table.

Exit status: 0 when every check passes, 1 when one fails, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHANNELS = 3
ODD_SHAPES = [(1, 1, 1), (1, 3, 5), (1, 37, 53), (3, 37, 53)]  # (batch, height, width)
TIMING_REPEATS = 50
RELATIVE_TOLERANCE = 1e-6


def fail_fast(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(2)


def require_gpu():
    """Return torch after checking that it finds a CUDA device, else exit 2."""
    try:
        import torch
    except ImportError:
        fail_fast("torch is not installed; this check compares the kernels with torch on CUDA")
    if not torch.cuda.is_available():
        fail_fast(
            "torch.cuda.is_available() is False (no NVIDIA GPU, driver or CUDA build of "
            f"torch {torch.__version__}); run this on a CUDA machine"
        )
    return torch


def build_extensions() -> None:
    try:
        from cpp_ext import build
    except ImportError as error:
        fail_fast(f"cannot load cpp_ext/build.py ({error}); pip install pybind11 setuptools")
    if build.find_nvcc() is None:
        fail_fast("nvcc was not found; set CUDA_HOME or use --skip-build with a built module")
    print("gpu_check: building with FMSR_CUDA=1 ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=REPO,
        env={**os.environ, "FMSR_CUDA": "1"},
        check=True,
    )


@dataclass
class Check:
    kernel: str
    case: str
    error: float
    passed: bool
    equals_reference: bool | None


@dataclass
class Timing:
    kernel: str
    side: int
    fmsr_ms: float
    torch_ms: float | None


class GpuCheck:
    """The checks and timings, sharing torch, the CUDA module and the stream."""

    def __init__(self, torch):
        from fmsr_infer import kernels, noise, resize

        self.torch = torch
        self.kernels = kernels
        self.noise = noise
        self.resize = resize
        self.cuda = kernels.load_cuda_kernels()
        self.device = torch.device("cuda")
        self.checks: list[Check] = []
        self.timings: list[Timing] = []

    # -----------------------------------------------------------------------------
    # helpers

    @property
    def stream(self) -> int:
        return self.torch.cuda.current_stream().cuda_stream

    def to_gpu(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def record(self, kernel, case, error, passed, equals_reference=None):
        self.checks.append(Check(kernel, case, float(error), bool(passed), equals_reference))

    def relative_error(self, got, expected) -> float:
        got = got.double()
        expected = expected.double()
        return float(((got - expected).abs() / (1.0 + expected.abs())).max())

    def time_ms(self, function) -> float:
        """Return the mean time in ms of `function` on the current stream, by CUDA events."""
        torch = self.torch
        for _ in range(3):
            function()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(TIMING_REPEATS):
            function()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / TIMING_REPEATS

    def tables(self, in_h: int, in_w: int):
        row_w, row_i, col_w, col_i = self.kernels.upsample_tables(in_h, in_w)
        return [self.to_gpu(table) for table in (row_w, row_i, col_w, col_i)]

    # -----------------------------------------------------------------------------
    # kernel launchers on torch tensors

    def launch_noise(self, out, seed, row0=0, col0=0):
        channels, height, width = out.shape
        self.cuda.gaussian_noise(
            out=out.data_ptr(),
            seed=seed,
            channels=channels,
            height=height,
            width=width,
            row0=row0,
            col0=col0,
            stream=self.stream,
        )

    def launch_upsample(self, lr, tables, out, out_row0=0, out_col0=0):
        batch, in_h, in_w, channels = lr.shape
        row_w, row_i, col_w, col_i = tables
        self.cuda.upsample(
            lr=lr.data_ptr(),
            lr_dtype=str(lr.dtype).removeprefix("torch."),
            batch=batch,
            in_h=in_h,
            in_w=in_w,
            channels=channels,
            row_weights=row_w.data_ptr(),
            row_indices=row_i.data_ptr(),
            table_rows=row_w.shape[0],
            row_taps=row_w.shape[1],
            col_weights=col_w.data_ptr(),
            col_indices=col_i.data_ptr(),
            table_cols=col_w.shape[0],
            col_taps=col_w.shape[1],
            out_row0=out_row0,
            out_col0=out_col0,
            out_h=out.shape[2],
            out_w=out.shape[3],
            out=out.data_ptr(),
            out_dtype=str(out.dtype).removeprefix("torch."),
            stream=self.stream,
        )

    @staticmethod
    def dtype_name(tensor) -> str:
        return str(tensor.dtype).removeprefix("torch.")

    # -----------------------------------------------------------------------------
    # checks

    def check_noise(self):
        torch = self.torch
        cases = [(0, 0, 0), (12345678901234567, 11, 7), (2**64 - 1, -9, -20), (2**32 + 5, 2**31, 3)]
        for _, height, width in ODD_SHAPES:
            for seed, row0, col0 in cases:
                out = torch.empty(CHANNELS, height, width, device=self.device)
                self.launch_noise(out, seed, row0, col0)
                got = out.cpu().numpy()
                expected = self.noise.gaussian_noise(seed, CHANNELS, height, width, row0, col0)
                mismatches = int(np.count_nonzero(got.view(np.uint32) != expected.view(np.uint32)))
                self.record(
                    "gaussian_noise",
                    f"{height}x{width} seed={seed} at ({row0},{col0})",
                    mismatches,
                    mismatches == 0,
                    mismatches == 0,
                )

    def torch_upsample64(self, lr01, tables):
        """Rows-first gather upsample in float64 of [N, C, H, W], the exact definition."""
        row_w, row_i, col_w, col_i = tables
        by_rows = (lr01[:, :, row_i.long(), :] * row_w.double()[:, :, None]).sum(dim=3)
        return (by_rows[:, :, :, col_i.long()] * col_w.double()).sum(dim=4)

    def check_upsample(self):
        torch = self.torch
        rng = np.random.default_rng(0)
        for batch, height, width in ODD_SHAPES:
            for dtype, max_value in ((np.uint8, 255), (np.uint16, 65535), (np.float32, 1)):
                if dtype == np.float32:
                    lr_np = rng.random((batch, height, width, CHANNELS), dtype=np.float32)
                else:
                    lr_np = rng.integers(0, max_value + 1, (batch, height, width, CHANNELS)).astype(
                        dtype
                    )
                lr = self.to_gpu(lr_np)
                tables = self.tables(height, width)
                expected = (
                    2.0 * self.torch_upsample64(lr.double().permute(0, 3, 1, 2) / max_value, tables)
                    - 1.0
                )
                out = torch.empty(batch, CHANNELS, 4 * height, 4 * width, device=self.device)
                self.launch_upsample(lr, tables, out)
                error = float((out.double() - expected).abs().max())
                cpu = self.kernels.upsample_condition(lr_np)
                self.record(
                    "upsample",
                    f"{batch}x{height}x{width} {np.dtype(dtype).name}",
                    error,
                    error <= 1e-6,
                    bool(np.array_equal(out.cpu().numpy(), cpu)),
                )

                half = torch.empty_like(out, dtype=torch.float16)
                self.launch_upsample(lr, tables, half)
                mismatches = int((half != out.half()).sum())
                self.record(
                    "upsample fp16",
                    f"{batch}x{height}x{width} {np.dtype(dtype).name}",
                    mismatches,
                    mismatches == 0,
                )

            # A tile equals the crop of the full output.
            full_h, full_w = 4 * height, 4 * width
            row0, col0 = full_h // 3, full_w // 5
            tile_h, tile_w = max(1, full_h // 2), max(1, full_w // 3)
            tile = torch.empty(batch, CHANNELS, tile_h, tile_w, device=self.device)
            self.launch_upsample(lr, tables, tile, out_row0=row0, out_col0=col0)
            crop = out[:, :, row0 : row0 + tile_h, col0 : col0 + tile_w]
            mismatches = int((tile != crop).sum())
            self.record("upsample tile", f"{batch}x{height}x{width}", mismatches, mismatches == 0)

    def check_steps(self):
        rng = np.random.default_rng(1)
        for batch, height, width in ODD_SHAPES:
            shape = (batch, CHANNELS, height, width)
            for net_dtype in (np.float32, np.float16):
                self.check_steps_on(
                    x_np=rng.standard_normal(shape).astype(np.float32),
                    a_np=rng.standard_normal(shape).astype(net_dtype),
                    b_np=rng.standard_normal(shape).astype(net_dtype),
                    case=f"{batch}x{height}x{width} {np.dtype(net_dtype).name}",
                )

    def check_steps_on(self, x_np, a_np, b_np, case):
        """Check the seven ODE updates on state x_np and network outputs a_np and b_np."""
        t, dt, floor = 0.3, 0.125, 0.05
        half_dt = float(np.float32(0.5 * dt))
        dt32 = float(np.float32(dt))
        scale = float(np.float32(dt / max(1 - t, floor)))
        rate = float(np.float32(1 / max(1 - t, floor)))
        rate_next = float(np.float32(1 / max(1 - (t + dt), floor)))
        midpoint_scale = float(np.float32(dt / max(1 - (t + 0.5 * dt), floor)))
        xp_np = (x_np + 0.1).astype(np.float32)
        x, a, b, xp = (self.to_gpu(array) for array in (x_np, a_np, b_np, xp_np))
        af, bf = a.float(), b.float()
        name = self.dtype_name(a)
        n = x.numel()
        cuda, kernels, stream = self.cuda, self.kernels, self.stream

        # kernel: (launch on the output tensor, torch result, numpy reference into ref)
        cases = {
            "euler_step": (
                lambda out: cuda.euler_step(
                    x=out.data_ptr(), v=a.data_ptr(), v_dtype=name, n=n, dt=dt, stream=stream
                ),
                x + dt32 * af,
                lambda ref: kernels.euler_step(ref, a_np, dt, backend="numpy"),
            ),
            "heun_predict": (
                lambda out: cuda.heun_predict(
                    x=x.data_ptr(),
                    v=a.data_ptr(),
                    v_dtype=name,
                    x_pred=out.data_ptr(),
                    n=n,
                    dt=dt,
                    stream=stream,
                ),
                x + dt32 * af,
                lambda ref: kernels.heun_predict(x_np, a_np, dt, out=ref, backend="numpy"),
            ),
            "heun_correct": (
                lambda out: cuda.heun_correct(
                    x=out.data_ptr(),
                    v=a.data_ptr(),
                    v_pred=b.data_ptr(),
                    v_dtype=name,
                    n=n,
                    dt=dt,
                    stream=stream,
                ),
                x + half_dt * (af + bf),
                lambda ref: kernels.heun_correct(ref, a_np, b_np, dt, backend="numpy"),
            ),
            "euler_step_x1": (
                lambda out: cuda.euler_step_x1(
                    x=out.data_ptr(),
                    x1_hat=a.data_ptr(),
                    x1_dtype=name,
                    n=n,
                    t=t,
                    dt=dt,
                    floor=floor,
                    stream=stream,
                ),
                x + scale * (af - x),
                lambda ref: kernels.euler_step_x1(ref, a_np, t, dt, floor, backend="numpy"),
            ),
            "heun_predict_x1": (
                lambda out: cuda.heun_predict_x1(
                    x=x.data_ptr(),
                    x1_hat=a.data_ptr(),
                    x1_dtype=name,
                    x_pred=out.data_ptr(),
                    n=n,
                    t=t,
                    dt=dt,
                    floor=floor,
                    stream=stream,
                ),
                x + scale * (af - x),
                lambda ref: kernels.heun_predict_x1(
                    x_np, a_np, t, dt, floor, out=ref, backend="numpy"
                ),
            ),
            "heun_correct_x1": (
                lambda out: cuda.heun_correct_x1(
                    x=out.data_ptr(),
                    x1_hat=a.data_ptr(),
                    x_pred=xp.data_ptr(),
                    x1_hat_pred=b.data_ptr(),
                    x1_dtype=name,
                    n=n,
                    t=t,
                    dt=dt,
                    floor=floor,
                    stream=stream,
                ),
                x + half_dt * (rate * (af - x) + rate_next * (bf - xp)),
                lambda ref: kernels.heun_correct_x1(
                    ref, a_np, xp_np, b_np, t, dt, floor, backend="numpy"
                ),
            ),
            "midpoint_step_x1": (
                lambda out: cuda.midpoint_step_x1(
                    x=out.data_ptr(),
                    x_mid=xp.data_ptr(),
                    x1_hat_mid=b.data_ptr(),
                    x1_dtype=name,
                    n=n,
                    t=t,
                    dt=dt,
                    floor=floor,
                    stream=stream,
                ),
                x + midpoint_scale * (bf - xp),
                lambda ref: kernels.midpoint_step_x1(
                    ref, xp_np, b_np, t, dt, floor, backend="numpy"
                ),
            ),
        }
        for kernel, (launch, expected, reference) in cases.items():
            out = x.clone()  # in-place kernels update it, the others overwrite it
            launch(out)
            error = self.relative_error(out, expected)
            ref = x_np.copy()
            reference(ref)
            same = bool(np.array_equal(out.cpu().numpy(), ref))
            self.record(kernel, case, error, error <= RELATIVE_TOLERANCE, same)

    def torch_image(self, x, upsample, residual_scale, pixel_max, dtype):
        y = x if upsample is None else upsample.float() + x / residual_scale
        unit = (y + 1.0) * 0.5
        unit = torch_where(self.torch, unit > 0, unit, 0.0)
        unit = torch_where(self.torch, unit < 1, unit, 1.0)
        return (unit * pixel_max + 0.5).floor().to(dtype).permute(0, 2, 3, 1).contiguous()

    def check_image(self):
        torch = self.torch
        rng = np.random.default_rng(2)
        for batch, height, width in ODD_SHAPES:
            shape = (batch, CHANNELS, height, width)
            x_np = rng.uniform(-1.3, 1.3, shape).astype(np.float32)
            x_np.flat[0] = np.nan
            x = self.to_gpu(x_np)
            for upsample_dtype in (None, np.float32, np.float16):
                up_np = (
                    None
                    if upsample_dtype is None
                    else rng.uniform(-1, 1, shape).astype(upsample_dtype)
                )
                up = None if up_np is None else self.to_gpu(up_np)
                scale = 1.0 if up is None else 3.0
                # uint16 images live in int16 tensors (same size), since torch supports few
                # operations on torch.uint16; numpy reinterprets them.
                for pixel, torch_pixel, pixel_max in (
                    (np.uint8, torch.uint8, 255),
                    (np.uint16, torch.int16, 65535),
                ):
                    out = torch.empty(
                        batch, height, width, CHANNELS, dtype=torch_pixel, device=self.device
                    )
                    self.cuda.state_to_image(
                        x=x.data_ptr(),
                        upsample=0 if up is None else up.data_ptr(),
                        upsample_dtype="float32" if up is None else self.dtype_name(up),
                        batch=batch,
                        channels=CHANNELS,
                        height=height,
                        width=width,
                        residual_scale=scale,
                        out=out.data_ptr(),
                        out_dtype=np.dtype(pixel).name,
                        stream=self.stream,
                    )
                    got = out.cpu().numpy().view(pixel)
                    expected = self.torch_image(x, up, scale, pixel_max, torch.int64).cpu().numpy()
                    error = int(np.abs(got.astype(np.int64) - expected).max())
                    reference = self.kernels.state_to_image(
                        x_np, up_np, scale, dtype=pixel, backend="numpy"
                    )
                    upsample_name = (
                        "none" if upsample_dtype is None else np.dtype(upsample_dtype).name
                    )
                    self.record(
                        "state_to_image",
                        f"{batch}x{height}x{width} {np.dtype(pixel).name} upsample={upsample_name}",
                        error,
                        error <= 1,
                        bool(np.array_equal(got, reference)),
                    )

    def check_blend(self):
        torch = self.torch
        rng = np.random.default_rng(3)
        height, width = 37, 53
        placements = [(0, 0, 16, 16), (10, 30, 27, 23), (36, 52, 1, 1), (0, 20, 37, 13)]
        for tile_dtype in (np.float32, np.float16):
            accum = torch.zeros(CHANNELS, height, width, device=self.device)
            weight_sum = torch.zeros(height, width, device=self.device)
            accum_ref = accum.clone()
            sum_ref = weight_sum.clone()
            accum_np = np.zeros((CHANNELS, height, width), np.float32)
            sum_np = np.zeros((height, width), np.float32)
            for row0, col0, tile_h, tile_w in placements:
                tile_np = rng.standard_normal((CHANNELS, tile_h, tile_w)).astype(tile_dtype)
                weight_np = rng.uniform(0.1, 1.0, (tile_h, tile_w)).astype(np.float32)
                tile, weight = self.to_gpu(tile_np), self.to_gpu(weight_np)
                self.cuda.blend_tile(
                    accum=accum.data_ptr(),
                    weight_sum=weight_sum.data_ptr(),
                    channels=CHANNELS,
                    height=height,
                    width=width,
                    tile=tile.data_ptr(),
                    tile_dtype=self.dtype_name(tile),
                    weight=weight.data_ptr(),
                    tile_h=tile_h,
                    tile_w=tile_w,
                    row0=row0,
                    col0=col0,
                    stream=self.stream,
                )
                accum_ref[:, row0 : row0 + tile_h, col0 : col0 + tile_w] += tile.float() * weight
                sum_ref[row0 : row0 + tile_h, col0 : col0 + tile_w] += weight
                self.kernels.blend_tile(
                    accum_np, sum_np, tile_np, weight_np, row0, col0, backend="numpy"
                )
            error = max(
                self.relative_error(accum, accum_ref), self.relative_error(weight_sum, sum_ref)
            )
            same = np.array_equal(accum.cpu().numpy(), accum_np) and np.array_equal(
                weight_sum.cpu().numpy(), sum_np
            )
            self.record(
                "blend_tile",
                f"{height}x{width} {np.dtype(tile_dtype).name}",
                error,
                error <= RELATIVE_TOLERANCE,
                same,
            )

            weight_sum[0, 0] = 0.0  # an uncovered pixel must normalize to 0
            sum_np[0, 0] = 0.0
            out = torch.empty_like(accum)
            self.cuda.normalize_blend(
                accum=accum.data_ptr(),
                weight_sum=weight_sum.data_ptr(),
                out=out.data_ptr(),
                channels=CHANNELS,
                height=height,
                width=width,
                stream=self.stream,
            )
            covered = weight_sum > 0
            expected = torch_where(
                torch, covered, accum / torch_where(torch, covered, weight_sum, 1.0), 0.0
            )
            error = self.relative_error(out, expected)
            reference = self.kernels.normalize_blend(accum.cpu().numpy(), sum_np, backend="numpy")
            self.record(
                "normalize_blend",
                f"{height}x{width}",
                error,
                error <= RELATIVE_TOLERANCE,
                bool(np.array_equal(out.cpu().numpy(), reference)),
            )

    # -----------------------------------------------------------------------------
    # timings

    def time_kernels(self, side: int):
        torch = self.torch
        shape = (1, CHANNELS, side, side)
        n = int(np.prod(shape))
        x = torch.randn(shape, device=self.device)
        v = torch.randn(shape, device=self.device)
        v_half = v.half()
        v_pred = torch.randn(shape, device=self.device)
        x_pred = torch.empty_like(x)
        lr = torch.randint(
            0, 256, (1, side // 4, side // 4, CHANNELS), dtype=torch.uint8, device=self.device
        )
        tables = self.tables(side // 4, side // 4)
        up = torch.empty(shape, device=self.device)
        image = torch.empty(1, side, side, CHANNELS, dtype=torch.uint8, device=self.device)
        accum = torch.zeros(CHANNELS, side, side, device=self.device)
        weight_sum = torch.zeros(side, side, device=self.device)
        weight = torch.rand(side, side, device=self.device)
        t, dt, floor = 0.4, 0.05, 1e-3
        try:
            from fmsr_train.resize_torch import upsample as torch_upsample
        except ImportError:
            torch_upsample = None

        def image_torch():
            unit = ((up + x / 4.0 + 1.0) * 0.5).clamp_(0.0, 1.0)
            return (
                unit.mul_(255.0).add_(0.5).floor_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            )

        cases = [
            (
                "gaussian_noise",
                lambda: self.launch_noise(x[0], 7),
                lambda: torch.randn(shape, device=self.device),
            ),
            (
                "upsample uint8 -> fp32",
                lambda: self.launch_upsample(lr, tables, up),
                None
                if torch_upsample is None
                else lambda: 2.0 * torch_upsample(lr.permute(0, 3, 1, 2).float() / 255.0) - 1.0,
            ),
            (
                "euler_step",
                lambda: self.cuda.euler_step(
                    x=x.data_ptr(),
                    v=v.data_ptr(),
                    v_dtype="float32",
                    n=n,
                    dt=dt,
                    stream=self.stream,
                ),
                lambda: x.add_(v, alpha=dt),
            ),
            (
                "euler_step fp16 v",
                lambda: self.cuda.euler_step(
                    x=x.data_ptr(),
                    v=v_half.data_ptr(),
                    v_dtype="float16",
                    n=n,
                    dt=dt,
                    stream=self.stream,
                ),
                lambda: x.add_(v_half.float(), alpha=dt),
            ),
            (
                "heun_correct",
                lambda: self.cuda.heun_correct(
                    x=x.data_ptr(),
                    v=v.data_ptr(),
                    v_pred=v_pred.data_ptr(),
                    v_dtype="float32",
                    n=n,
                    dt=dt,
                    stream=self.stream,
                ),
                lambda: x.add_(v + v_pred, alpha=0.5 * dt),
            ),
            (
                "heun_correct_x1",
                lambda: self.cuda.heun_correct_x1(
                    x=x.data_ptr(),
                    x1_hat=v.data_ptr(),
                    x_pred=x_pred.data_ptr(),
                    x1_hat_pred=v_pred.data_ptr(),
                    x1_dtype="float32",
                    n=n,
                    t=t,
                    dt=dt,
                    floor=floor,
                    stream=self.stream,
                ),
                lambda: x.add_(
                    (v - x) / max(1 - t, floor) + (v_pred - x_pred) / max(1 - t - dt, floor),
                    alpha=0.5 * dt,
                ),
            ),
            (
                "midpoint_step_x1",
                lambda: self.cuda.midpoint_step_x1(
                    x=x.data_ptr(),
                    x_mid=x_pred.data_ptr(),
                    x1_hat_mid=v_pred.data_ptr(),
                    x1_dtype="float32",
                    n=n,
                    t=t,
                    dt=dt,
                    floor=floor,
                    stream=self.stream,
                ),
                lambda: x.add_(v_pred - x_pred, alpha=dt / max(1 - (t + 0.5 * dt), floor)),
            ),
            (
                "state_to_image residual",
                lambda: self.cuda.state_to_image(
                    x=x.data_ptr(),
                    upsample=up.data_ptr(),
                    upsample_dtype="float32",
                    batch=1,
                    channels=CHANNELS,
                    height=side,
                    width=side,
                    residual_scale=4.0,
                    out=image.data_ptr(),
                    out_dtype="uint8",
                    stream=self.stream,
                ),
                image_torch,
            ),
            (
                "blend_tile",
                lambda: self.cuda.blend_tile(
                    accum=accum.data_ptr(),
                    weight_sum=weight_sum.data_ptr(),
                    channels=CHANNELS,
                    height=side,
                    width=side,
                    tile=v.data_ptr(),
                    tile_dtype="float32",
                    weight=weight.data_ptr(),
                    tile_h=side,
                    tile_w=side,
                    row0=0,
                    col0=0,
                    stream=self.stream,
                ),
                lambda: (accum.add_(v[0] * weight), weight_sum.add_(weight)),
            ),
            (
                "normalize_blend",
                lambda: self.cuda.normalize_blend(
                    accum=accum.data_ptr(),
                    weight_sum=weight.data_ptr(),
                    out=x_pred.data_ptr(),
                    channels=CHANNELS,
                    height=side,
                    width=side,
                    stream=self.stream,
                ),
                lambda: accum / weight,
            ),
        ]
        for kernel, fmsr_call, torch_call in cases:
            fmsr_ms = self.time_ms(fmsr_call)
            torch_ms = self.time_ms(torch_call) if torch_call is not None else None
            self.timings.append(Timing(kernel, side, fmsr_ms, torch_ms))


def torch_where(torch, condition, value, other):
    """torch.where with a Python scalar for either branch, on the branches' dtype."""
    if not isinstance(value, torch.Tensor):
        value = torch.full_like(other, value)
    if not isinstance(other, torch.Tensor):
        other = torch.full_like(value, other)
    return torch.where(condition, value, other)


def report(check: GpuCheck, torch) -> str:
    properties = torch.cuda.get_device_properties(0)
    lines = [
        "# CUDA kernel check",
        "",
        (
            f"`python benchmarks/gpu_check.py` on {properties.name} "
            f"(sm_{properties.major}{properties.minor}), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}."
        ),
        "",
        "## Checks",
        "",
        (
            "Error: mismatching values for the noise and the tile and fp16 checks, max "
            "|got - torch| / (1 + |torch|) for float kernels, max level difference for images."
        ),
        "",
        "| kernel | case | error | passed | equals numpy reference |",
        "|---|---|---:|---|---|",
    ]
    for item in check.checks:
        if item.equals_reference is None:
            same = "n/a"
        else:
            same = "yes" if item.equals_reference else "no"
        lines.append(
            f"| {item.kernel} | {item.case} | {item.error:.3g} | "
            f"{'yes' if item.passed else 'NO'} | {same} |"
        )
    lines += [
        "",
        "## Timings",
        "",
        f"Mean of {TIMING_REPEATS} calls by CUDA events, {CHANNELS} channels, batch 1.",
        "",
        "| kernel | side | fmsr ms | torch ms | torch / fmsr |",
        "|---|---:|---:|---:|---:|",
    ]
    for item in check.timings:
        torch_cell = "n/a" if item.torch_ms is None else f"{item.torch_ms:.4f}"
        ratio = "n/a" if item.torch_ms is None else f"{item.torch_ms / item.fmsr_ms:.1f}x"
        lines.append(
            f"| {item.kernel} | {item.side} | {item.fmsr_ms:.4f} | {torch_cell} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-build", action="store_true", help="use the already built fmsr_infer._ext_cuda"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[256, 1024], help="output sides to time, in pixels"
    )
    parser.add_argument("--output", type=Path, help="also write the report to this markdown file")
    args = parser.parse_args()

    torch = require_gpu()
    if not args.skip_build:
        build_extensions()
    try:
        check = GpuCheck(torch)
    except ImportError as error:
        fail_fast(str(error))

    check.check_noise()
    check.check_upsample()
    check.check_steps()
    check.check_image()
    check.check_blend()
    torch.cuda.synchronize()
    for side in args.sizes:
        check.time_kernels(side)

    text = report(check, torch)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    failed = [item for item in check.checks if not item.passed]
    if failed:
        print(f"gpu_check: {len(failed)} of {len(check.checks)} checks failed", file=sys.stderr)
        return 1
    print(f"gpu_check: all {len(check.checks)} checks passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
