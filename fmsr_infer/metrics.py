"""PSNR and SSIM as the super-resolution literature reports them.

Conventions (BasicSR's numpy metrics, which published x4 tables use): both images are
8-bit (rounded), `crop_border` pixels (the scale) are cut from each side, colour
images are scored on the Y channel of ITU-R BT.601 in studio range,
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in [0, 255] (unrounded
float), grayscale images as they are. PSNR uses a peak of 255; SSIM uses an 11x11
Gaussian window of sigma 1.5 over the valid region, C1 = (0.01·255)², C2 = (0.03·255)².
A dataset's score is the mean of per-image scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Return the BT.601 luma in [16, 235] of an [H, W, 3] RGB image in [0, 255]."""
    img = img.astype(np.float64)
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def _prepare(img: np.ndarray, crop_border: int, y_channel: bool) -> np.ndarray:
    if img.dtype != np.uint8:
        raise TypeError(f"metrics expect 8-bit images (uint8), got {img.dtype}; round first")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel and img.ndim == 3:
        return rgb_to_y(img)
    return img.astype(np.float64)


def _check_pair(sr: np.ndarray, hr: np.ndarray):
    if sr.shape != hr.shape:
        raise ValueError(f"image shapes differ: {sr.shape} vs {hr.shape}")


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4, y_channel: bool = True) -> float:
    """PSNR in dB of two uint8 images ([H, W] or [H, W, C]); inf when identical."""
    _check_pair(sr, hr)
    a = _prepare(sr, crop_border, y_channel)
    b = _prepare(hr, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return math.inf
    return float(10.0 * math.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D float64 image with the 1-D kernel g."""
    k = g.size
    h, w = img.shape
    rows = sum(g[i] * img[i : h - k + 1 + i, :] for i in range(k))
    return sum(g[j] * rows[:, j : w - k + 1 + j] for j in range(k))


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    g = _gaussian_window()
    mu_a = _filter_valid(a, g)
    mu_b = _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4, y_channel: bool = True) -> float:
    """SSIM of two uint8 images; colour images without `y_channel` average over channels."""
    _check_pair(sr, hr)
    a = _prepare(sr, crop_border, y_channel)
    b = _prepare(hr, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {a.shape[:2]}")
    if a.ndim == 2:
        return _ssim_channel(a, b)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


@dataclass
class Scores:
    psnr_y: float
    ssim_y: float
    psnr_rgb: float


def score(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4) -> Scores:
    """Score one SR output against its HR: Y-PSNR, Y-SSIM and RGB PSNR."""
    return Scores(
        psnr_y=psnr(sr, hr, crop_border, y_channel=True),
        ssim_y=ssim(sr, hr, crop_border, y_channel=True),
        psnr_rgb=psnr(sr, hr, crop_border, y_channel=False),
    )


def mean_scores(scores: list[Scores]) -> Scores:
    """Average per-image scores, the dataset score of the literature."""
    if not scores:
        raise ValueError("no scores to average")
    return Scores(
        psnr_y=float(np.mean([s.psnr_y for s in scores])),
        ssim_y=float(np.mean([s.ssim_y for s in scores])),
        psnr_rgb=float(np.mean([s.psnr_rgb for s in scores])),
    )


def to_uint8(img01: np.ndarray) -> np.ndarray:
    """Clamp an image in [0, 1] and round it to 8 bits, as outputs are saved."""
    return np.clip(np.floor(np.asarray(img01, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(
        np.uint8
    )
