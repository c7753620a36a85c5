"""Timing statistics, FLOP counts, the machine's peak matmul rate and image PSNR."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class CallTimer:
    """Context manager that adds the wall time of each `with` block to `seconds`.

    `sync` runs before the clock starts and before it stops (torch.cuda.synchronize
    on a GPU), so asynchronous work is charged to the block that launched it.
    """

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync
        self.seconds = 0.0
        self.calls = 0
        self._start = 0.0

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> CallTimer:
        if self.sync is not None:
            self.sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.sync is not None:
            self.sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def summarize(seconds: list[float]) -> dict[str, Any]:
    """Return the run count, median, p90 (linear interpolation), min and mean in seconds."""
    values = np.asarray(seconds, dtype=np.float64)
    return {
        "runs": int(values.size),
        "median_s": float(np.median(values)),
        "p90_s": float(np.percentile(values, 90)),
        "min_s": float(values.min()),
        "mean_s": float(values.mean()),
    }


def time_repeated(
    fn: Callable[[], Any],
    min_runs: int,
    min_seconds: float = 0.0,
    max_runs: int | None = None,
    sync: Callable[[], None] | None = None,
) -> list[float]:
    """Time `fn` at least `min_runs` times, and more until `min_seconds` have passed.

    `max_runs` caps the count (default: no cap beyond what `min_seconds` requires).
    Warm-up is the caller's job.
    """
    times: list[float] = []
    started = time.perf_counter()
    while True:
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
        enough = len(times) >= min_runs and time.perf_counter() - started >= min_seconds
        if enough or (max_runs is not None and len(times) >= max(max_runs, min_runs)):
            return times


def count_network_flops(model: torch.nn.Module, height: int, width: int) -> int:
    """Count the FLOPs of one call at batch 1 and [height, width], from the layers.

    torch.utils.flop_counter.FlopCounterMode counts convolutions and matrix products
    (2 FLOPs per multiply-add) and ignores elementwise work such as SiLU and the
    residual adds. The model runs on the meta device, so nothing is computed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    meta_model = copy.deepcopy(model).to("meta").eval()
    x_t = torch.empty(1, 3, height, width, device="meta")
    cond = torch.empty(1, 3, height, width, device="meta")
    t = torch.empty(1, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(x_t, cond, t)
    return int(counter.get_total_flops())


def measure_peak_gflops(
    size: int, repeats: int, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Measure the best rate of a [size, size] x [size, size] matrix product in GFLOP/s.

    This is the machine's practical peak for dense math in `dtype` (MKL or oneDNN on
    the CPU, cuBLAS on a GPU), against which the network's rate is compared.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    torch.matmul(a, b)  # warm-up: thread pool start and, on a GPU, the cuBLAS handle
    times = time_repeated(lambda: torch.matmul(a, b), min_runs=repeats, sync=sync)
    flops = 2 * size**3
    return {
        "operation": f"torch.matmul [{size}x{size}] x [{size}x{size}] {str(dtype).split('.')[-1]}",
        "device": device,
        "flops": flops,
        "runs": len(times),
        "best_s": min(times),
        "gflops": flops / min(times) / 1e9,
        "median_gflops": flops / float(np.median(times)) / 1e9,
    }


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images over all channels; inf when they are equal."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)
