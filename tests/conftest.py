"""Shared fixtures: real photos from scikit-image and a freshly trained tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SET5 = SHARED_DATA / "val" / "Set5"

# A network small enough to train and export in seconds on two CPU cores.
TINY_OVERRIDES = [
    "model.base_channels=8",
    "model.blocks_per_scale=1",
    "model.time_dim=16",
    "data.hr_crop=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "train.max_steps=12",
    "train.warmup_steps=2",
    "train.log_every=4",
    "train.ckpt_every=6",
    "train.threads=1",
    "eval.every_steps=0",
]


def photo_arrays() -> dict[str, np.ndarray]:
    """RGB uint8 photos shipped with scikit-image."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
    }


def run_cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the console scripts as a subprocess, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(kwargs.pop("env", {}))
    proc = subprocess.run(
        list(args), capture_output=True, text=True, env=env, timeout=600, **kwargs
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, arr in photo_arrays().items():
        Image.fromarray(arr).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, photo_dir) -> Path:
    """Train a tiny model with the fmsr-train CLI; returns its run folder."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    sets = []
    for item in TINY_OVERRIDES + [f"data.train_dir={photo_dir}", f"run_dir={run_dir}"]:
        sets += ["--set", item]
    run_cli("fmsr-train", "--config", str(REPO / "config.yaml"), *sets)
    return run_dir


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory) -> Path:
    """Export the tiny model's last checkpoint with the fmsr-export CLI."""
    out = tmp_path_factory.mktemp("tiny_model") / "tiny.onnx"
    ckpt = tiny_run / "checkpoints" / "step_12.pt"
    run_cli("fmsr-export", "--ckpt", str(ckpt), "--out", str(out))
    return out


def python() -> str:
    return sys.executable
