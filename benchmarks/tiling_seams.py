"""How much does tiling change fmsr-infer's output? PSNR of tiled against untiled runs.

Super-resolves one image whole and then with each tile size and overlap, with the same
seed, and prints the PSNR (RGB, 8-bit, no border cropped) of each tiled output against
the untiled one, for temperature 0 and 1.

    python benchmarks/tiling_seams.py --model MODEL.onnx --image LR.png [--steps 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fmsr_infer.backends import create_backend
from fmsr_infer.imageio import load_image
from fmsr_infer.metrics import psnr, to_uint8
from fmsr_infer.model_info import load_info
from fmsr_infer.pipeline import SampleSettings, Upscaler
from fmsr_infer.tiling import TileSettings, plan_tiles

TILINGS = ((128, 32), (128, 16), (64, 16), (96, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="ONNX model from fmsr-export")
    parser.add_argument("--image", required=True, type=Path, help="RGB LR image")
    parser.add_argument("--steps", type=int, default=4, help="Euler steps")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    info = load_info(args.model)
    upscaler = Upscaler(create_backend("cpu", args.model, info), info)
    image = load_image(args.image)
    lr = image.color.astype(np.float32) / image.max_value
    if lr.shape[2] == 1:
        lr = np.repeat(lr, 3, axis=2)
    print(f"model {args.model} (training step {info.training_step}), image {args.image.name} "
          f"{lr.shape[1]}x{lr.shape[0]}, euler {args.steps} steps, seed {args.seed}")
    print("temperature | tile | overlap | tiles | PSNR vs untiled (dB)")
    for temperature in (0.0, 1.0):
        settings = SampleSettings(args.steps, "euler", args.seed, temperature)
        start = time.perf_counter()
        whole = to_uint8(upscaler.upscale(lr, settings).image)
        seconds = time.perf_counter() - start
        for tile, overlap in TILINGS:
            tiled = upscaler.upscale(lr, settings, TileSettings(tile, overlap, batch=2))
            height, width = whole.shape[:2]
            count = len(plan_tiles(height, width, TileSettings(tile, overlap), info.size_multiple))
            score = psnr(to_uint8(tiled.image), whole, crop_border=0, y_channel=False)
            print(f"{temperature:11.1f} | {tile:4d} | {overlap:7d} | {count:5d} | {score:.2f}")
        print(f"(untiled run: {seconds:.2f} s)")


if __name__ == "__main__":
    main()
