"""Measure image quality per network call over samplers, time grids and temperatures.

`fmsr-eval` runs every `SweepSetting` (sampler, grid, temperature, steps) on LR images
with their HR and scores each output with the metrics of `fmsr_infer.metrics`
(Y-PSNR, Y-SSIM) and with a weight-free sharpness measure, the high-frequency ratio:

    hf_ratio = E(SR) / E(HR),  E(img) = sum of |FFT(w · (Y - mean Y))|² over the
    frequencies that the LR cannot carry, max(|f_x|, |f_y|) > 1 / (2 · scale) cycles
    per HR pixel, divided by the pixel count,

with Y the BT.601 luma of the 8-bit image, cropped by `scale` pixels at each side as
for PSNR, and w a 2-D Hann window against leakage from the image border. 1 means as
much detail energy as the HR, below 1 blur, above 1 more energy than the HR (noise or
ringing). The frontier treats both directions alike through hf_error = |log2 hf_ratio|.

PSNR alone favours blur: with the straight path, a single Euler step from t = 0 returns
the network's estimate of the conditional mean, so PSNR can peak at few calls while
detail needs more. A dataset's score is the mean of its per-image scores.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fmsr_infer import flow
from fmsr_infer.metrics import psnr, rgb_to_y, ssim, to_uint8
from fmsr_infer.model_info import ModelInfo
from fmsr_infer.noise import gaussian_noise
from fmsr_infer.pipeline import SampleSettings, Upscaler, pad_to_multiple
from fmsr_infer.resize import upsample
from fmsr_infer.samplers import DEFAULT_SHIFT, GRIDS, get_sampler, make_grid, network_calls

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------
# LR/HR pairs


@dataclass(frozen=True)
class ImagePair:
    stem: str
    lr_path: Path
    hr_path: Path


def _images_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
            continue
        if path.stem in found:
            raise ValueError(f"two images with the stem {path.stem!r}: {found[path.stem]}, {path}")
        found[path.stem] = path
    return found


def pair_images(lr_dir: Path, hr_dir: Path, scale: int) -> list[ImagePair]:
    """Pair each LR `{stem}x{scale}.png` or `{stem}.png` with the HR `{stem}.png`.

    Any extension of `IMAGE_EXTENSIONS` works on both sides. LR images without an HR
    are logged and skipped. Raises ValueError when no pair is found.
    """
    lr_images = _images_by_stem(Path(lr_dir))
    hr_images = _images_by_stem(Path(hr_dir))
    suffix = f"x{scale}"
    pairs: list[ImagePair] = []
    unpaired: list[str] = []
    for lr_stem, lr_path in lr_images.items():
        stem = lr_stem[: -len(suffix)] if lr_stem.endswith(suffix) else lr_stem
        if stem not in hr_images:
            stem = lr_stem
        if stem in hr_images:
            pairs.append(ImagePair(stem, lr_path, hr_images[stem]))
        else:
            unpaired.append(lr_path.name)
    if unpaired:
        log.warning("skipped %d LR images without an HR in %s: %s", len(unpaired), hr_dir, unpaired)
    if not pairs:
        raise ValueError(
            f"no LR image in {lr_dir} has an HR in {hr_dir}; expected LR {{stem}}{suffix}.png "
            f"or {{stem}}.png against HR {{stem}}.png"
        )
    return pairs


def load_pair(pair: ImagePair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Read an LR/HR pair as RGB uint8 [h, w, 3] and [scale·h, scale·w, 3].

    An HR up to scale - 1 pixels larger than scale × LR is cropped at the bottom and
    right, as the literature does for HR sizes that are not multiples of the scale.
    """
    with Image.open(pair.lr_path) as img:
        lr = np.asarray(img.convert("RGB"))
    with Image.open(pair.hr_path) as img:
        hr = np.asarray(img.convert("RGB"))
    out_h, out_w = lr.shape[0] * scale, lr.shape[1] * scale
    extra_h, extra_w = hr.shape[0] - out_h, hr.shape[1] - out_w
    if not (0 <= extra_h < scale and 0 <= extra_w < scale):
        raise ValueError(
            f"HR {pair.hr_path} is {hr.shape[1]}x{hr.shape[0]} but its LR {pair.lr_path} "
            f"is {lr.shape[1]}x{lr.shape[0]}; expected an HR of {out_w}x{out_h} for {scale}x"
        )
    return lr, hr[:out_h, :out_w]


# ---------------------------------------------------------------------------------------
# Sharpness


def high_frequency_energy(y: np.ndarray, scale: int) -> float:
    """Compute the energy of a 2-D image above the Nyquist frequency of its 1/scale LR.

    The mean is subtracted and a 2-D Hann window applied before the FFT. The energy is
    the sum of |F|² over max(|f_x|, |f_y|) > 1 / (2 · scale) cycles per pixel, divided
    by the pixel count.
    """
    if y.ndim != 2:
        raise ValueError(f"high_frequency_energy expects a 2-D image, got shape {y.shape}")
    height, width = y.shape
    window = np.outer(np.hanning(height), np.hanning(width))
    spectrum = np.fft.fft2((y - y.mean()) * window)
    f_y = np.abs(np.fft.fftfreq(height))[:, None]
    f_x = np.abs(np.fft.fftfreq(width))[None, :]
    band = np.maximum(f_y, f_x) > 0.5 / scale
    return float(np.sum(np.abs(spectrum[band]) ** 2) / (height * width))


def _luma(img: np.ndarray, crop_border: int) -> np.ndarray:
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    return rgb_to_y(img) if img.ndim == 3 else img.astype(np.float64)


def sharpness_ratio(sr: np.ndarray, hr: np.ndarray, scale: int, crop_border: int) -> float:
    """Return the high-frequency ratio E(SR) / E(HR) of two uint8 RGB images (see module)."""
    if sr.shape != hr.shape:
        raise ValueError(f"image shapes differ: {sr.shape} vs {hr.shape}")
    reference = high_frequency_energy(_luma(hr, crop_border), scale)
    if reference == 0:
        raise ValueError("the HR image has no energy above the LR Nyquist frequency")
    return high_frequency_energy(_luma(sr, crop_border), scale) / reference


# ---------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class GridSpec:
    """A named time grid of `fmsr_infer.samplers` and its shift (for "shifted" only)."""

    name: str
    shift: float | None = None

    @classmethod
    def parse(cls, text: str) -> GridSpec:
        """Parse "uniform", "image_end", "shifted" or "shifted:S" (S the shift)."""
        name, _, shift_text = text.strip().partition(":")
        if name not in GRIDS:
            raise ValueError(f"unknown time grid {name!r}; expected one of {tuple(GRIDS)}")
        shift = None
        if shift_text:
            try:
                shift = float(shift_text)
            except ValueError:
                raise ValueError(f"invalid shift {shift_text!r} in grid {text!r}") from None
        spec = cls(name, shift)
        spec.times(1)  # validates the shift and where it applies
        return spec

    def times(self, steps: int) -> list[float]:
        return make_grid(self.name, steps, self.shift)

    @property
    def label(self) -> str:
        if self.name == "shifted":
            return f"shifted:{DEFAULT_SHIFT if self.shift is None else self.shift:g}"
        return self.name


@dataclass(frozen=True)
class SweepSetting:
    """A sampler configuration of the sweep, whose `steps` counts grid intervals like `--steps`."""

    sampler: str
    grid: GridSpec
    temperature: float
    steps: int

    @property
    def calls(self) -> int:
        return network_calls(self.sampler, self.steps)

    @property
    def label(self) -> str:
        return f"{self.sampler} {self.grid.label} T={self.temperature:g} steps={self.steps}"


def sweep_settings(
    samplers: Sequence[str],
    grids: Sequence[GridSpec],
    temperatures: Sequence[float],
    max_calls: int,
) -> list[SweepSetting]:
    """List every setting with at most `max_calls` network calls, fewest calls first.

    Settings that sample identically are listed once, under the first sampler and grid
    given: at 1 step every grid is [0, 1] and heun_euler_last is one Euler step, and
    shifted:1 is the uniform grid.
    """
    settings: dict[tuple, SweepSetting] = {}
    for sampler in samplers:
        get_sampler(sampler)
        for grid in grids:
            for temperature in temperatures:
                steps = 1
                while network_calls(sampler, steps) <= max_calls:
                    setting = SweepSetting(sampler, grid, float(temperature), steps)
                    settings.setdefault(_sample_key(setting), setting)
                    steps += 1
    return sorted(settings.values(), key=lambda s: s.calls)


def _sample_key(setting: SweepSetting) -> tuple:
    sampler = setting.sampler
    if sampler == "heun_euler_last" and setting.steps == 1:
        sampler = "euler"
    return (sampler, tuple(setting.grid.times(setting.steps)), setting.temperature)


# ---------------------------------------------------------------------------------------
# Sampling


@dataclass
class PreparedImage:
    """An LR/HR pair with the conditioning and noise of `Upscaler.upscale` drawn once.

    cond and noise: [1, 3, H, W] float32 in network units, padded to the size multiple.
    hr: [out_h, out_w, 3] uint8.
    """

    stem: str
    cond: np.ndarray
    noise: np.ndarray
    hr: np.ndarray
    bicubic: np.ndarray


def prepare_image(pair: ImagePair, info: ModelInfo, seed: int) -> PreparedImage:
    """Load a pair and build its conditioning and noise as `Upscaler.upscale` does."""
    lr, hr = load_pair(pair, info.scale)
    up01 = upsample(lr.astype(np.float32) / 255.0, info.scale)
    cond = flow.to_network(up01).astype(np.float32).transpose(2, 0, 1)[None]
    cond, _, _ = pad_to_multiple(cond, info.size_multiple)
    noise = gaussian_noise(seed, 3, cond.shape[2], cond.shape[3])[None]
    return PreparedImage(pair.stem, cond, noise, hr, to_uint8(up01))


def super_resolve(
    upscaler: Upscaler, image: PreparedImage, setting: SweepSetting, seed: int
) -> tuple[np.ndarray, int]:
    """Sample one setting on a prepared image and return (uint8 [H, W, 3], network calls)."""
    settings = SampleSettings(
        steps=setting.steps,
        sampler=setting.sampler,
        seed=seed,
        temperature=setting.temperature,
        grid=setting.grid.name,
        shift=setting.grid.shift,
    )
    out, calls = upscaler.sample(image.cond, image.noise, settings)
    out_h, out_w = image.hr.shape[:2]
    out01 = flow.from_network(out[0, :, :out_h, :out_w]).transpose(1, 2, 0)
    return to_uint8(out01), calls


# ---------------------------------------------------------------------------------------
# Measurements


@dataclass
class Measurement:
    """The scores of one setting (None: the bicubic upsample) on one image."""

    stem: str
    setting: SweepSetting | None
    calls: int
    psnr_y: float
    ssim_y: float
    hf_ratio: float
    seconds: float


def score_image(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float, float]:
    """Return Y-PSNR, Y-SSIM and the high-frequency ratio, cropping `scale` pixels."""
    return (
        psnr(sr, hr, crop_border=scale),
        ssim(sr, hr, crop_border=scale),
        sharpness_ratio(sr, hr, scale, crop_border=scale),
    )


def run_sweep(
    upscaler: Upscaler,
    pairs: Sequence[ImagePair],
    settings: Sequence[SweepSetting],
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> list[Measurement]:
    """Run every setting on every pair, plus the bicubic baseline of each pair.

    `on_progress(calls)` is called after each setting with the network calls it made.
    """
    scale = upscaler.info.scale
    measurements: list[Measurement] = []
    for pair in pairs:
        image = prepare_image(pair, upscaler.info, seed)
        bicubic_scores = score_image(image.bicubic, image.hr, scale)
        measurements.append(Measurement(pair.stem, None, 0, *bicubic_scores, 0.0))
        for setting in settings:
            start = time.perf_counter()
            sr, calls = super_resolve(upscaler, image, setting, seed)
            seconds = time.perf_counter() - start
            scores = score_image(sr, image.hr, scale)
            measurements.append(Measurement(pair.stem, setting, calls, *scores, seconds))
            if on_progress is not None:
                on_progress(calls)
        log.info("scored %d settings on %s", len(settings), pair.stem)
    return measurements


@dataclass
class Summary:
    """The dataset means of one setting (None: the bicubic upsample)."""

    setting: SweepSetting | None
    calls: int
    psnr_y: float
    ssim_y: float
    hf_ratio: float
    seconds_per_image: float
    images: int

    @property
    def hf_error(self) -> float:
        """|log2 hf_ratio|: 0 when the output has the HR's high-frequency energy."""
        return abs(math.log2(self.hf_ratio)) if self.hf_ratio > 0 else math.inf

    @property
    def label(self) -> str:
        return "bicubic" if self.setting is None else self.setting.label


def summarize(measurements: Iterable[Measurement]) -> list[Summary]:
    """Average the per-image measurements of each setting, the bicubic baseline first."""
    groups: dict[SweepSetting | None, list[Measurement]] = {}
    for m in measurements:
        groups.setdefault(m.setting, []).append(m)
    summaries = []
    for setting, group in groups.items():
        summaries.append(
            Summary(
                setting=setting,
                calls=group[0].calls,
                psnr_y=float(np.mean([m.psnr_y for m in group])),
                ssim_y=float(np.mean([m.ssim_y for m in group])),
                hf_ratio=float(np.mean([m.hf_ratio for m in group])),
                seconds_per_image=float(np.mean([m.seconds for m in group])),
                images=len(group),
            )
        )
    return sorted(summaries, key=lambda s: (s.setting is not None, s.calls))


def pareto_frontier(summaries: Iterable[Summary], max_calls: int) -> list[Summary]:
    """Return the settings with at most `max_calls` calls that no other such setting beats.

    A setting is beaten when another has PSNR at least as high and hf_error at least as
    low, one of them strictly. The bicubic baseline is left out. Sorted by PSNR.
    """
    candidates = [s for s in summaries if s.setting is not None and s.calls <= max_calls]
    frontier = []
    for s in candidates:
        beaten = any(
            o.psnr_y >= s.psnr_y
            and o.hf_error <= s.hf_error
            and (o.psnr_y > s.psnr_y or o.hf_error < s.hf_error)
            for o in candidates
        )
        if not beaten:
            frontier.append(s)
    return sorted(frontier, key=lambda s: -s.psnr_y)


def best_psnr_by_calls(
    summaries: Iterable[Summary], temperature: float | None = None
) -> dict[int, Summary]:
    """Map each call count to its setting of highest PSNR, optionally at one temperature."""
    best: dict[int, Summary] = {}
    for s in summaries:
        if s.setting is None:
            continue
        if temperature is not None and s.setting.temperature != temperature:
            continue
        if s.calls not in best or s.psnr_y > best[s.calls].psnr_y:
            best[s.calls] = s
    return dict(sorted(best.items()))
