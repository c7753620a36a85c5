"""Training and validation data: HR folders, LR made the field's way, random crops.

Every training sample is a pure function of (seed, global sample index): the image is
drawn from a per-epoch permutation and the crop and augmentation from a generator
seeded by the index. A resumed run therefore continues the exact data order from the
sample counter stored in its checkpoint, and ranks of a distributed run draw disjoint
samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmsr_infer.resize import SCALE, downsample, mod_crop

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def find_lr(lr_dir: Path, stem: str) -> Path | None:
    """Find the LR partner of an HR stem: DIV2K's X4/0001x4.png, 0001x4.png or 0001.png."""
    for name in (f"X{SCALE}/{stem}x{SCALE}", f"{stem}x{SCALE}", stem):
        for ext in IMAGE_EXTENSIONS:
            candidate = lr_dir / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def make_lr(hr: np.ndarray) -> np.ndarray:
    """Make the 8-bit LR of a mod-cropped uint8 HR image, as the benchmark sets are made."""
    lr = downsample(hr.astype(np.float64) / 255.0)
    return np.clip(np.floor(lr * 255.0 + 0.5), 0, 255).astype(np.uint8)


@dataclass
class Pair:
    name: str
    hr: np.ndarray  # [H, W, 3] uint8, sides multiples of SCALE
    lr: np.ndarray  # [H / SCALE, W / SCALE, 3] uint8


def load_pairs(hr_dir: str | Path, lr_dir: str | Path | None = None, min_size: int = 0):
    """Load HR images with their LR (paired folder or made by bicubic downscaling).

    Images whose sides are below `min_size` are skipped with a warning.
    """
    paths = list_images(hr_dir)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {hr_dir}")
    pairs = []
    for path in paths:
        hr = mod_crop(load_rgb(path))
        if min(hr.shape[:2]) < max(min_size, SCALE):
            log.warning(
                "skipping %s: %dx%d is smaller than the %d px crop",
                path.name, hr.shape[1], hr.shape[0], min_size,
            )
            continue
        if lr_dir is not None:
            lr_path = find_lr(Path(lr_dir), path.stem)
            if lr_path is None:
                raise FileNotFoundError(
                    f"no LR image for {path.name} in {lr_dir} "
                    f"(looked for X{SCALE}/{path.stem}x{SCALE}.png, {path.stem}x{SCALE}.png)"
                )
            lr = load_rgb(lr_path)
            expected = (hr.shape[0] // SCALE, hr.shape[1] // SCALE)
            if lr.shape[:2] != expected:
                raise ValueError(
                    f"LR {lr_path} is {lr.shape[1]}x{lr.shape[0]}, expected "
                    f"{expected[1]}x{expected[0]} for HR {path.name} (mod-cropped)"
                )
        else:
            lr = make_lr(hr)
        pairs.append(Pair(path.stem, hr, lr))
    if not pairs:
        raise ValueError(f"no image in {hr_dir} is at least {min_size} px on each side")
    return pairs


def augment(img: np.ndarray, code: int) -> np.ndarray:
    """Apply one of the 8 flips/rotations by 90 degrees, chosen by `code` in [0, 8)."""
    if code & 4:
        img = img[:, ::-1]
    return np.rot90(img, k=code & 3)


class CropDataset(torch.utils.data.Dataset):
    """Random HR crops with their LR, indexed by a global sample counter.

    Item k returns (hr [3, crop, crop], lr [3, crop/4, crop/4]), float32 in [0, 1].
    """

    def __init__(self, pairs: list[Pair], hr_crop: int, seed: int, length: int):
        self.pairs = pairs
        self.hr_crop = hr_crop
        self.seed = seed
        self.length = length
        self._perm_epoch = -1
        self._perm = None

    def __len__(self) -> int:
        return self.length

    def _image_index(self, k: int) -> int:
        n = len(self.pairs)
        epoch = k // n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 1]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[k % n])

    def __getitem__(self, k: int):
        pair = self.pairs[self._image_index(k)]
        rng = np.random.default_rng([self.seed, k, 2])
        lr_crop = self.hr_crop // SCALE
        lr_h, lr_w = pair.lr.shape[:2]
        y = int(rng.integers(0, lr_h - lr_crop + 1))
        x = int(rng.integers(0, lr_w - lr_crop + 1))
        code = int(rng.integers(0, 8))
        lr = pair.lr[y : y + lr_crop, x : x + lr_crop]
        hr = pair.hr[y * SCALE : (y + lr_crop) * SCALE, x * SCALE : (x + lr_crop) * SCALE]
        hr = np.ascontiguousarray(augment(hr, code)).transpose(2, 0, 1)
        lr = np.ascontiguousarray(augment(lr, code)).transpose(2, 0, 1)
        return (
            torch.from_numpy(hr.astype(np.float32) / 255.0),
            torch.from_numpy(lr.astype(np.float32) / 255.0),
        )


class ShardSampler(torch.utils.data.Sampler):
    """Global sample indices start, start + 1, ... split round-robin over ranks."""

    def __init__(self, start: int, stop: int, rank: int = 0, world_size: int = 1):
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        return iter(range(self.start + self.rank, self.stop, self.world_size))

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.stop, self.world_size))
