"""Measure the peak RSS of one end-to-end run in a fresh process.

fmsr-bench starts this module once per (backend, size, tiling), because a process's
peak RSS only grows: measured in the benchmark's own process, every size would show
the peak of the largest one run before it. Prints one JSON object on stdout.

On Linux the peak (VmHWM) is reset after the model is loaded, so `run_peak_mb` is the
peak of the run itself and `growth_mb` what the image added to the loaded process.
Elsewhere the peak is ru_maxrss, which includes loading.

    python -m benchmarks.memory_probe --kind runtime --model m.onnx --lr-size 64

The runtime probe imports fmsr_infer and numpy only (no torch), as fmsr-infer does.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from benchmarks.images import synthetic_lr
from benchmarks.runtime import RunSettings, runtime_upscale

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    """Return a `kB` field of /proc/self/status in bytes, or None off Linux."""
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def current_rss_bytes() -> int | None:
    """Return the resident set size now (VmRSS, else psutil), or None."""
    rss = _status_bytes("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process (Linux 4.0+); return whether it did."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes(reset_done: bool) -> int:
    """Return the peak RSS since the reset (VmHWM), or over the whole process (ru_maxrss)."""
    if reset_done:
        peak = _status_bytes("VmHWM")
        if peak is not None:
            return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def run_runtime(args, run: RunSettings) -> tuple[tuple[int, ...], int | None, bool]:
    from fmsr_infer.backends import create_backend
    from fmsr_infer.model_info import load_info
    from fmsr_infer.pipeline import Upscaler

    info = load_info(args.model)
    upscaler = Upscaler(create_backend("cpu", args.model, info, threads=args.threads), info)
    lr = synthetic_lr(args.lr_size)
    loaded = current_rss_bytes()
    reset = reset_peak_rss()
    runtime_upscale(upscaler, lr, run, keep_output=False)
    scale = info.scale
    return (lr.shape[0] * scale, lr.shape[1] * scale, 3), loaded, reset


def run_eager(args, run: RunSettings) -> tuple[tuple[int, ...], int | None, bool]:
    import torch

    from benchmarks.backends import BASELINE, TorchBackend
    from benchmarks.measure import CallTimer
    from benchmarks.models import BenchModel
    from fmsr_export.export import load_ema_model
    from fmsr_infer.model_info import load_info

    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, _ = load_ema_model(args.ckpt)
    bench_model = BenchModel(args.model, load_info(args.model), "probe", model, args.ckpt)
    backend = TorchBackend(BASELINE, bench_model, "eager")
    backend.setup()
    lr = synthetic_lr(args.lr_size)
    loaded = current_rss_bytes()
    reset = reset_peak_rss()
    image, _ = backend.upscale(lr, run, CallTimer())
    return image.shape, loaded, reset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("runtime", "eager"), required=True)
    parser.add_argument("--model", required=True, help="ONNX model (its JSON beside it).")
    parser.add_argument("--ckpt", help="Checkpoint for --kind eager.")
    parser.add_argument("--lr-size", type=int, required=True, help="LR side in pixels.")
    parser.add_argument(
        "--tile", type=int, default=0, help="Tile side in output pixels (runtime only); 0 = none."
    )
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = all.")
    args = parser.parse_args(argv)
    if args.kind == "eager" and not args.ckpt:
        parser.error("--kind eager needs --ckpt")
    if args.kind == "eager" and args.tile:
        parser.error("--tile applies to --kind runtime only")
    run = RunSettings(args.sampler, args.steps, args.seed, args.temperature, args.tile)

    start = time.perf_counter()
    shape, loaded, reset = (run_runtime if args.kind == "runtime" else run_eager)(args, run)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes(reset)
    print(json.dumps({
        "kind": args.kind,
        "lr_size": args.lr_size,
        "tile": args.tile,
        "output_shape": list(shape),
        "run_peak_mb": peak / 2**20,
        "peak_is_run_only": reset,
        "rss_after_load_mb": None if loaded is None else loaded / 2**20,
        "growth_mb": None if loaded is None else (peak - loaded) / 2**20,
        "seconds": seconds,
        "torch_imported": "torch" in sys.modules,
    }))


if __name__ == "__main__":
    main()
