"""Peak memory of fmsr-infer on a large input: is it bounded by the tile, not the image?

Writes a synthetic LR photo of the requested size (default 4000 x 3000, so a
16000 x 12000 output) and runs the fmsr-infer console script on it once, as a user
would. Prints the command, the wall time, the peak resident set size (RSS) of the
fmsr-infer process and the size of the PNG it wrote.

    python benchmarks/tiling_memory.py --model MODEL.onnx [--lr-size 4000x3000]
        [--steps 1] [--extra "--tile 512"]

Peak RSS is `ru_maxrss` of the child process, read in a parent that starts nothing
else, so it is the fmsr-infer process alone. Linux only (ru_maxrss in KiB).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fmsr_infer.imageio import PngWriter


def write_synthetic_photo(path: Path, width: int, height: int, seed: int = 0) -> None:
    """Write a smooth, colourful RGB PNG with fine noise, band by band."""
    rng = np.random.default_rng(seed)
    cols = np.arange(width, dtype=np.float32)
    with path.open("wb") as handle:
        writer = PngWriter(handle, width, height, 3, 8)
        for row0 in range(0, height, 256):
            rows = np.arange(row0, min(height, row0 + 256), dtype=np.float32)[:, None]
            planes = [
                np.sin(cols / 97.0 + rows / 53.0),
                np.cos(cols / 41.0 - rows / 71.0),
                np.sin((cols + rows) / 29.0),
            ]
            band = (np.stack(planes, axis=2) + 1.0) * 110.0
            band += rng.normal(0.0, 8.0, size=band.shape)
            writer.write_rows(np.clip(band, 0, 255).astype(np.uint8))
        writer.close()


def png_size(path: Path) -> tuple[int, int]:
    """Return (width, height) from a PNG's IHDR chunk."""
    with path.open("rb") as handle:
        header = handle.read(24)
    return struct.unpack(">II", header[16:24])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="ONNX model from fmsr-export")
    parser.add_argument("--lr-size", default="4000x3000", help="LR width x height in pixels")
    parser.add_argument("--steps", type=int, default=1, help="sampler steps")
    parser.add_argument("--extra", default="", help="more fmsr-infer options, one string")
    parser.add_argument("--keep", action="store_true", help="keep the output PNG")
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        parser.error("peak RSS is read from ru_maxrss in KiB, which needs Linux")
    width, height = (int(v) for v in args.lr_size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="fmsr_tiling_memory_"))
    try:
        lr = work / "lr.png"
        start = time.perf_counter()
        write_synthetic_photo(lr, width, height)
        print(f"input: {lr.name} {width}x{height} RGB, written in "
              f"{time.perf_counter() - start:.1f} s")

        exe = shutil.which("fmsr-infer") or "fmsr-infer"
        command = [exe, str(lr), "--model", args.model, "-o", str(work / "out"),
                   "--steps", str(args.steps), "--verbose", *shlex.split(args.extra)]
        print("command:", " ".join(shlex.quote(part) for part in command))
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        for line in proc.stderr.splitlines():
            if line.startswith("DEBUG"):
                print("  " + line)
        print("  " + proc.stdout.strip())
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            print(f"fmsr-infer exited with {proc.returncode}", file=sys.stderr)
            return 1

        output = next((work / "out").glob("*.png"))
        out_w, out_h = png_size(output)
        print(f"output: {out_w}x{out_h} PNG, {output.stat().st_size / 2**20:.0f} MiB")
        print(f"wall time: {seconds:.1f} s")
        print(f"peak RSS of fmsr-infer: {peak_mib:.0f} MiB")
        print(f"machine: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
        if args.keep:
            kept = Path.cwd() / output.name
            shutil.move(output, kept)
            print(f"kept {kept}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
