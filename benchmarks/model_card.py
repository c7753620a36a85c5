"""Score an exported model on a validation set for its model card.

Runs the fmsr runtime (ONNX Runtime on the CPU, the same code as fmsr-infer) on each LR
image and prints a Markdown table of Y-PSNR / SSIM at 1, 2, 4 and 8 steps of Euler and
Heun and temperatures 0, 0.5 and 1, with bicubic and the per-image scores of the
model's recommended setting. Usage (from the repository root):

    python benchmarks/model_card.py --model fmsr_infer/models/default.onnx \
        --hr ../shared/data/val/Set5/HR --lr ../shared/data/val/Set5/LR_bicubic_X4
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fmsr_infer.backends import create_backend
from fmsr_infer.metrics import mean_scores, score, to_uint8
from fmsr_infer.model_info import load_info
from fmsr_infer.pipeline import SampleSettings, Upscaler
from fmsr_infer.resize import mod_crop, upsample

STEPS = (1, 2, 4, 8)
SAMPLERS = ("euler", "heun")
TEMPERATURES = (0.0, 0.5, 1.0)


def load_set(hr_dir: Path, lr_dir: Path):
    pairs = []
    for hr_path in sorted(hr_dir.glob("*.png")):
        lr_path = lr_dir / f"{hr_path.stem}x4.png"
        if not lr_path.is_file():
            lr_path = lr_dir / hr_path.name
        hr = mod_crop(np.asarray(Image.open(hr_path).convert("RGB")))
        lr = np.asarray(Image.open(lr_path).convert("RGB"), dtype=np.float32) / 255.0
        pairs.append((hr_path.stem, hr, lr))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("fmsr_infer/models/default.onnx"))
    parser.add_argument("--hr", type=Path, required=True)
    parser.add_argument("--lr", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    info = load_info(args.model)
    upscaler = Upscaler(create_backend("cpu", args.model, info), info)
    pairs = load_set(args.hr, args.lr)
    bicubic = [score(to_uint8(upsample(lr)), hr) for _, hr, lr in pairs]
    b = mean_scores(bicubic)

    print(f"Model {args.model} (training step {info.training_step}), {len(pairs)} images, "
          f"seed {args.seed}, {platform.machine()} CPU, ONNX Runtime.\n")
    print(f"Bicubic: {b.psnr_y:.2f} dB / {b.ssim_y:.4f}\n")
    print("| sampler | steps | network calls | T = 0 | T = 0.5 | T = 1 |")
    print("|---|---|---|---|---|---|")
    per_image = {}
    start = time.perf_counter()
    for sampler in SAMPLERS:
        for steps in STEPS:
            cells = []
            calls = 0
            for temperature in TEMPERATURES:
                settings = SampleSettings(steps, sampler, args.seed, temperature)
                scores = []
                for name, hr, lr in pairs:
                    result = upscaler.upscale(lr, settings)
                    calls = result.network_calls
                    scores.append(score(to_uint8(result.image), hr))
                per_image[(sampler, steps, temperature)] = scores
                m = mean_scores(scores)
                cells.append(f"{m.psnr_y:.2f} / {m.ssim_y:.4f}")
            print(f"| {sampler} | {steps} | {calls} | " + " | ".join(cells) + " |", flush=True)

    default = SampleSettings(
        info.steps_default, info.sampler_default, args.seed, info.temperature_default,
        info.grid_default, info.shift_default,
    )
    ours_default = [score(to_uint8(upscaler.upscale(lr, default).image), hr) for _, hr, lr in pairs]
    print(
        f"\nPer image, the model's recommended setting ({default.sampler}, {default.steps} "
        f"steps, {default.grid} grid, T = {default.temperature:g}):\n"
    )
    print("| image | bicubic Y-PSNR | ours Y-PSNR | gain |")
    print("|---|---|---|---|")
    for (name, _, _), bic, ours in zip(pairs, bicubic, ours_default):
        print(f"| {name} | {bic.psnr_y:.2f} | {ours.psnr_y:.2f} | {ours.psnr_y - bic.psnr_y:+.2f} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
