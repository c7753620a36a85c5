"""Time the CPU kernels of fmsr_infer.kernels against numpy and torch equivalents.

Usage:
    python setup.py build_ext --inplace   # builds fmsr_infer._ext
    python benchmarks/kernels.py [--sizes 256 1024] [--output FILE.md]
    OMP_NUM_THREADS=1 python benchmarks/kernels.py   # one thread for both cpp and torch

For each kernel and output size (square, 3 channels, batch 1) it prints a markdown
table of median wall times of repeated calls, plus the min for the compiled kernel.
The columns are the compiled kernel ("cpp"), the numpy reference that the runtime
falls back to, and the nearest torch expression (CPU, OMP_NUM_THREADS or all cores). The torch column is a comparison point, not the same
computation in every row, because torch.randn uses torch's own generator, not Philox.
Only that column needs torch, and without torch it reads "n/a".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmsr_infer import kernels, resize

try:
    import torch
except ImportError:
    torch = None

CHANNELS = 3
# Each timing repeats until it has this many samples or this many seconds.
MIN_REPEATS, MAX_REPEATS, TIME_BUDGET_S = 3, 25, 1.0


def time_ms(function: Callable[[], object]) -> tuple[float, float]:
    """Return the median and the min wall time of `function` in ms, after a warm-up call.

    On a busy machine the min is the closer estimate of the cost without contention.
    """
    function()
    samples = []
    started = time.perf_counter()
    while len(samples) < MAX_REPEATS:
        begin = time.perf_counter()
        function()
        samples.append(time.perf_counter() - begin)
        if len(samples) >= MIN_REPEATS and time.perf_counter() - started > TIME_BUDGET_S:
            break
    return 1000.0 * statistics.median(samples), 1000.0 * min(samples)


def torch_upsample_function(lr: np.ndarray) -> Callable[[], object]:
    """Return a torch call computing upsample_condition(lr) in float32."""
    try:
        from fmsr_train.resize_torch import upsample
    except ImportError:
        upsample = None
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].contiguous()
    if upsample is not None:
        return lambda: (2.0 * upsample(x.float() / 255.0) - 1.0)[0]

    row_w, row_i, col_w, col_i = (
        torch.from_numpy(t) for t in resize.upsample_tables(*lr.shape[:2])
    )
    row_i, col_i = row_i.long(), col_i.long()

    def gather_upsample():
        x01 = x.float() / 255.0
        by_rows = (x01[:, :, row_i, :] * row_w[:, :, None]).sum(dim=3)
        return (2.0 * (by_rows[:, :, :, col_i] * col_w).sum(dim=4) - 1.0)[0]

    return gather_upsample


def kernel_cases(size: int) -> list[tuple[str, Callable, Callable, Callable | None]]:
    """Return (name, cpp, numpy, torch or None) callables at output size `size`."""
    rng = np.random.default_rng(0)
    shape = (CHANNELS, size, size)
    lr = rng.integers(0, 256, (size // 4, size // 4, CHANNELS)).astype(np.uint8)
    x = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    v_half = v.astype(np.float16)
    v_pred = rng.standard_normal(shape).astype(np.float32)
    x_pred = np.empty_like(x)
    upsample = rng.uniform(-1, 1, shape).astype(np.float32)
    accum = np.zeros(shape, np.float32)
    weight_sum = np.zeros((size, size), np.float32)
    weight = rng.uniform(0.1, 1.0, (size, size)).astype(np.float32)
    image = np.empty((size, size, CHANNELS), np.uint8)
    t, dt, floor, scale = 0.4, 0.05, 1e-3, 4.0

    def both(call):
        return (lambda: call("cpp"), lambda: call("numpy"))

    cases = [
        (
            "gaussian_noise",
            *both(lambda b: kernels.gaussian_noise(1, CHANNELS, size, size, out=x_pred, backend=b)),
        ),
        ("upsample_condition", *both(lambda b: kernels.upsample_condition(lr, backend=b))),
        (
            "upsample_condition fp16",
            *both(lambda b: kernels.upsample_condition(lr, dtype=np.float16, backend=b)),
        ),
        ("euler_step", *both(lambda b: kernels.euler_step(x, v, dt, backend=b))),
        ("euler_step fp16 v", *both(lambda b: kernels.euler_step(x, v_half, dt, backend=b))),
        ("heun_predict", *both(lambda b: kernels.heun_predict(x, v, dt, out=x_pred, backend=b))),
        ("heun_correct", *both(lambda b: kernels.heun_correct(x, v, v_pred, dt, backend=b))),
        ("euler_step_x1", *both(lambda b: kernels.euler_step_x1(x, v, t, dt, floor, backend=b))),
        (
            "heun_correct_x1",
            *both(lambda b: kernels.heun_correct_x1(x, v, x_pred, v_pred, t, dt, floor, backend=b)),
        ),
        (
            "midpoint_step_x1",
            *both(lambda b: kernels.midpoint_step_x1(x, x_pred, v_pred, t, dt, floor, backend=b)),
        ),
        (
            "state_to_image residual",
            *both(lambda b: kernels.state_to_image(x, upsample, scale, out=image, backend=b)),
        ),
        (
            "blend_tile",
            *both(lambda b: kernels.blend_tile(accum, weight_sum, v, weight, 0, 0, backend=b)),
        ),
        (
            "normalize_blend",
            *both(lambda b: kernels.normalize_blend(accum, weight + 1, out=x_pred, backend=b)),
        ),
    ]
    if torch is None:
        return [(name, cpp, ref, None) for name, cpp, ref in cases]

    tx, tv, tv_pred = torch.from_numpy(x), torch.from_numpy(v), torch.from_numpy(v_pred)
    tv_half, tx_pred = torch.from_numpy(v_half), torch.from_numpy(x_pred)
    tup, taccum = torch.from_numpy(upsample), torch.from_numpy(accum)
    tsum, tweight = torch.from_numpy(weight_sum), torch.from_numpy(weight)
    rate, rate_next = 1.0 / max(1 - t, floor), 1.0 / max(1 - t - dt, floor)

    def torch_image():
        unit = ((tup + tx / scale + 1.0) * 0.5).clamp_(0.0, 1.0)
        return unit.mul_(255.0).add_(0.5).floor_().to(torch.uint8).permute(1, 2, 0).contiguous()

    def torch_heun_correct_x1():
        velocity = (tv - tx) * rate + (tv_pred - tx_pred) * rate_next
        return tx.add_(velocity, alpha=0.5 * dt)

    def torch_midpoint_step_x1():
        return tx.add_(tv_pred - tx_pred, alpha=dt / max(1 - (t + 0.5 * dt), floor))

    def torch_blend():
        taccum.add_(tv * tweight)
        tsum.add_(tweight)

    torch_calls = {
        "gaussian_noise": lambda: torch.randn(CHANNELS, size, size),
        "upsample_condition": torch_upsample_function(lr),
        "upsample_condition fp16": None,
        "euler_step": lambda: tx.add_(tv, alpha=dt),
        "euler_step fp16 v": lambda: tx.add_(tv_half.float(), alpha=dt),
        "heun_predict": lambda: torch.add(tx, tv, alpha=dt, out=tx_pred),
        "heun_correct": lambda: tx.add_(tv + tv_pred, alpha=0.5 * dt),
        "euler_step_x1": lambda: tx.add_(tv - tx, alpha=dt / max(1 - t, floor)),
        "heun_correct_x1": torch_heun_correct_x1,
        "midpoint_step_x1": torch_midpoint_step_x1,
        "state_to_image residual": torch_image,
        "blend_tile": torch_blend,
        "normalize_blend": lambda: taccum / (tweight + 1),
    }
    return [(name, cpp, ref, torch_calls[name]) for name, cpp, ref in cases]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[256, 1024], help="output sides in pixels"
    )
    parser.add_argument("--output", type=Path, help="also write the report to this markdown file")
    args = parser.parse_args()
    if not kernels.extension_available():
        print(
            "fmsr_infer._ext is not built; run `python setup.py build_ext --inplace`",
            file=sys.stderr,
        )
        return 2

    rows = []
    for size in args.sizes:
        for name, cpp, reference, torch_call in kernel_cases(size):
            cpp_ms, cpp_min_ms = time_ms(cpp)
            numpy_ms, _ = time_ms(reference)
            torch_ms = time_ms(torch_call)[0] if torch_call is not None else None
            rows.append((name, size, cpp_ms, cpp_min_ms, numpy_ms, torch_ms))
            print(f"{name} {size}: cpp {cpp_ms:.3f} ms", file=sys.stderr)

    threads = os.environ.get("OMP_NUM_THREADS", f"default ({os.cpu_count()} CPUs)")
    load = (
        ", ".join(f"{value:.1f}" for value in os.getloadavg())
        if hasattr(os, "getloadavg")
        else "n/a"
    )
    torch_text = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads" if torch else "no torch"
    )
    lines = [
        f"# CPU kernel timings, OpenMP threads {threads}",
        "",
        (
            f"`python benchmarks/kernels.py --sizes {' '.join(map(str, args.sizes))}` on "
            f"{cpu_name()}, {os.cpu_count()} logical CPUs; numpy "
            f"{np.__version__}, {torch_text}; Python {platform.python_version()}; "
            f"{date.today().isoformat()}. Load average (1, 5, 15 min) at the end of the run: "
            f"{load}. Other processes on the machine inflate and scatter the timings, the "
            "parallel ones most."
        ),
        "",
        (
            f"Median (and, for cpp, min) wall time in ms of one call on a {CHANNELS}-channel "
            "square output of the given side (the upsample reads a uint8 LR of a quarter "
            "of it). numpy is the reference that fmsr_infer.kernels falls back to, and "
            "torch the nearest torch expression (torch.randn for the noise, which is "
            "another generator)."
        ),
        "",
        "| kernel | side | cpp ms | cpp min ms | numpy ms | torch ms | numpy / cpp | torch / cpp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, cpp_ms, cpp_min_ms, numpy_ms, torch_ms in rows:
        torch_cell = f"{torch_ms:.3f}" if torch_ms is not None else "n/a"
        ratio_cell = f"{torch_ms / cpp_ms:.1f}x" if torch_ms is not None else "n/a"
        lines.append(
            f"| {name} | {size} | {cpp_ms:.3f} | {cpp_min_ms:.3f} | {numpy_ms:.3f} | "
            f"{torch_cell} | {numpy_ms / cpp_ms:.1f}x | {ratio_cell} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
