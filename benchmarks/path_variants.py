"""Compare the flow's path variants on the same training budget, scored on Set5.

Trains one network per (target, prediction) pair with identical data, seed, steps and
architecture, then reports Set5 Y-PSNR/SSIM of the EMA weights at temperature 0 and 1
with 1 and 8 Euler steps. Usage (from the repository root):

    python benchmarks/path_variants.py --train-dir ../shared/data/train \
        --val-dir ../shared/data/val/Set5/HR --val-lr-dir ../shared/data/val/Set5/LR_bicubic_X4 \
        --steps 300 --out benchmarks/results/path_variants.md
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from fmsr_train.config import load_config
from fmsr_train.data import load_pairs
from fmsr_train.evaluate import evaluate
from fmsr_train.train import Trainer

VARIANTS = [("image", "velocity"), ("image", "x1"), ("residual", "velocity"), ("residual", "x1")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--val-dir", required=True)
    parser.add_argument("--val-lr-dir", default=None)
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64, help="HR crop side in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the table")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    val_pairs = load_pairs(args.val_dir, args.val_lr_dir)
    rows = []
    for target, prediction in VARIANTS:
        with tempfile.TemporaryDirectory() as run_dir:
            config = load_config(None, [
                f"data.train_dir={args.train_dir}", f"run_dir={run_dir}",
                f"data.hr_crop={args.crop}", f"data.batch_size={args.batch}",
                "data.grad_accum=1", "data.num_workers=0",
                f"train.max_steps={args.steps}", "train.lr=5e-4", "train.warmup_steps=50",
                f"train.threads={args.threads}", "train.log_every=100000",
                "train.ckpt_every=100000000", "eval.every_steps=0",
                f"fm.target={target}", f"fm.prediction={prediction}",
            ])
            trainer = Trainer(config)
            start = time.perf_counter()
            trainer.train()
            minutes = (time.perf_counter() - start) / 60
            scores = {}
            for temperature in (0.0, 1.0):
                for steps in (1, 8):
                    result = evaluate(trainer.ema.module, val_pairs, config.fm, steps,
                                      torch.device("cpu"), temperature=temperature)
                    scores[(temperature, steps)] = (result["psnr_y"], result["ssim_y"])
            rows.append((target, prediction, minutes, scores, result["bicubic_psnr_y"]))
            print(target, prediction, f"{minutes:.1f} min", scores, flush=True)

    lines = [
        f"Path variants after {args.steps} steps of batch {args.batch}, {args.crop} px crops, "
        f"on {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads). "
        f"Set5 Y-PSNR (dB) / SSIM of the EMA weights; bicubic {rows[0][4]:.2f} dB.",
        "",
        "| target | prediction | train min | T=0, 1 step | T=0, 8 steps | T=1, 1 step | T=1, 8 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, prediction, minutes, scores, _ in rows:
        cells = [f"{scores[k][0]:.2f} / {scores[k][1]:.4f}" for k in
                 [(0.0, 1), (0.0, 8), (1.0, 1), (1.0, 8)]]
        lines.append(f"| {target} | {prediction} | {minutes:.1f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
