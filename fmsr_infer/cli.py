"""`fmsr-infer`: super-resolve an image or a folder of images by 4x.

A folder run never stops for one bad file. Each input that cannot be read, scored or
written gets one line naming it and the reason, the rest of the folder is processed,
and the exit status is 1 when any input failed. Errors in the options, the model or
the output folder exit with status 2 before any image is read. An interrupt (SIGINT,
SIGTERM) exits with 128 plus the signal number and leaves no partial output behind.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from fmsr_infer.backends import BACKENDS
from fmsr_infer.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    LRImage,
    PngWriter,
    atomic_output,
    load_image,
    save_with_pillow,
    write_png,
)
from fmsr_infer.model_info import ModelError, load_info
from fmsr_infer.samplers import DEFAULT_SHIFT, GRIDS, SAMPLERS, make_grid, network_calls
from fmsr_infer.tiling import DEFAULT_MEMORY_BUDGET_MB, DEFAULT_OVERLAP, fit_to_backend

log = logging.getLogger("fmsr_infer")

DEFAULT_MODEL = Path(__file__).parent / "models" / "default.onnx"
DEFAULT_SUFFIX = "_x{scale}_s{steps}"
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
SCORES_CSV = "scores.csv"
GRID_FOLDER = "grids"

EXIT_FAILED_INPUTS = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """An error in the options, the model or the output folder: nothing can run."""


class InputFailed(Exception):
    """One input could not be processed; the message is the reason."""


# Errors that fail one input and let the run go on: unreadable files, write errors
# (OSError), and what the network or the pipeline raise on one image.
PER_INPUT_ERRORS = (InputFailed, ImageReadError, OSError, ValueError, MemoryError, RuntimeError)


@dataclass
class Job:
    """One input and where its output goes."""

    source: Path
    relative: Path  # source relative to the input root, mirrored under the output folder
    output: Path
    ext: str  # "png", "jpg" or "webp"


@dataclass
class Plan:
    """The jobs of a run, and the inputs skipped or failed before any is processed."""

    jobs: list[Job] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason", not failures
    failures: list[str] = field(default_factory=list)  # "path: reason"


# ---------------------------------------------------------------------------------------
# Finding the inputs and naming the outputs


def output_ext(ext_option: str, source: Path) -> str:
    """Resolve --ext: "auto" keeps JPEG as jpg and WebP as webp, everything else is png."""
    if ext_option != "auto":
        return ext_option
    suffix = source.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return "jpg"
    if suffix == ".webp":
        return "webp"
    return "png"


def list_candidates(input_path: Path, recursive: bool, output_dir: Path, plan: Plan) -> list[Path]:
    """Return the image files under `input_path`, sorted; record what is skipped and why."""
    if input_path.is_file():
        return [input_path]
    output_resolved = output_dir.resolve()
    found: list[Path] = []
    folders = [input_path]
    visited = {input_path.resolve()}
    while folders:
        folder = folders.pop(0)
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            plan.failures.append(f"{folder}: cannot list the folder: {exc.strerror or exc}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                log.debug("skipped hidden entry %s", entry)
                continue
            if entry.is_dir():
                resolved = entry.resolve()
                if resolved == output_resolved:
                    log.debug("skipped %s: it is the output folder", entry)
                elif not recursive:
                    plan.skipped.append(f"{entry}: a folder (pass --recursive to process it)")
                elif resolved in visited:
                    plan.skipped.append(f"{entry}: a link to a folder already listed")
                else:
                    visited.add(resolved)
                    folders.append(entry)
                continue
            if not entry.is_file():
                plan.skipped.append(f"{entry}: not a regular file")
            elif entry.suffix.lower() not in IMAGE_EXTENSIONS:
                plan.skipped.append(
                    f"{entry}: not an image file name (extensions: {', '.join(IMAGE_EXTENSIONS)})"
                )
            else:
                found.append(entry)
    return sorted(found)


def plan_jobs(
    input_path: Path,
    output_dir: Path,
    recursive: bool,
    suffix: str,
    ext_option: str,
    skip_existing: bool,
) -> Plan:
    """Pair each input with its output path, rejecting outputs that would clash.

    Rules, in order:
    1. With a non-empty suffix, an input named as the output of another input
       (a_x4_s8.png beside a.png) is an earlier output: it is skipped, and it may be
       replaced by the new output.
    2. An output that would replace any other input fails its input.
    3. When several inputs map to one output (a.png and a.jpg), the first in sorted
       order keeps it and the others fail.
    4. With `skip_existing`, inputs whose output exists are skipped.
    """
    plan = Plan()
    root = input_path.parent if input_path.is_file() else input_path
    sources = list_candidates(input_path, recursive, output_dir, plan)

    jobs = []
    for source in sources:
        relative = source.relative_to(root)
        ext = output_ext(ext_option, source)
        output = output_dir / relative.parent / f"{source.stem}{suffix}.{ext}"
        jobs.append(Job(source, relative, output, ext))

    source_keys = {job.source.resolve(): job for job in jobs}
    earlier_outputs = set()
    if suffix:
        for job in jobs:
            owner = source_keys.get(job.output.resolve())
            if owner is not None and owner is not job:
                earlier_outputs.add(owner.source.resolve())
                plan.skipped.append(
                    f"{owner.source}: named as the output of {job.source}, so taken as an "
                    "earlier output and not processed"
                )

    claimed: dict[Path, Job] = {}
    for job in jobs:
        if job.source.resolve() in earlier_outputs:
            continue
        key = job.output.resolve()
        if key in source_keys and key not in earlier_outputs:
            plan.failures.append(
                f"{job.source}: its output {job.output} would overwrite an input file; "
                "choose another -o or --suffix"
            )
        elif key in claimed:
            plan.failures.append(
                f"{job.source}: its output {job.output.name} is already the output of "
                f"{claimed[key].source.name}; rename one of the two inputs"
            )
        elif skip_existing and job.output.exists():
            plan.skipped.append(f"{job.source}: output {job.output} exists (--skip-existing)")
            claimed[key] = job
        else:
            claimed[key] = job
            plan.jobs.append(job)
    return plan


# ---------------------------------------------------------------------------------------
# Writing one output


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """Round 16-bit pixels to 8 bits (v / 257, the exact 65535 -> 255 mapping)."""
    if pixels.dtype == np.uint8:
        return pixels
    return np.floor(pixels.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)


def check_output_kind(job: Job, image: LRImage) -> None:
    """Reject outputs that would lose a channel; warn when they lose bit depth."""
    if job.ext == "jpg" and image.alpha is not None:
        raise InputFailed(
            "the image has an alpha channel, which JPEG cannot store; use --ext png or webp"
        )
    if job.ext != "png" and image.bit_depth == 16:
        log.warning("%s: 16-bit input written as 8-bit %s", job.source, job.ext)


def write_held(job: Job, pixels: np.ndarray, icc: bytes | None, quality: int) -> None:
    """Write a whole output image held in memory, atomically."""
    with atomic_output(job.output) as handle:
        if job.ext == "png":
            write_png(handle, pixels, icc)
        else:
            save_with_pillow(handle, to_8bit(pixels), OUTPUT_FORMATS[job.ext], quality, icc)


# ---------------------------------------------------------------------------------------
# Scores and comparison grids


def find_hr(hr_dir: Path, job: Job, scale: int) -> Path | None:
    """Find the HR of an input: same stem, or the stem without a trailing x4 (Set5, DIV2K)."""
    folder = hr_dir / job.relative.parent
    stems = [job.source.stem]
    if job.source.stem.lower().endswith(f"x{scale}"):
        stems.append(job.source.stem[: -len(f"x{scale}")])
    for stem in stems:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def rgb_8bit(pixels: np.ndarray) -> np.ndarray:
    """Convert [H, W, C] output pixels to [H, W, 3] uint8 RGB, dropping alpha."""
    pixels = to_8bit(pixels)
    if pixels.shape[2] in (1, 2):
        return np.repeat(pixels[..., :1], 3, axis=2)
    return pixels[..., :3]


def load_hr(path: Path, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Load an HR image as [H, W, C] uint8, cropped to `shape` when only mod-crop differs."""
    hr = load_image(path, max_pixels=0)
    pixels = to_8bit(hr.color)
    height, width = shape
    if pixels.shape[:2] != shape:
        fits = (
            pixels.shape[0] - pixels.shape[0] % scale == height
            and pixels.shape[1] - pixels.shape[1] % scale == width
        )
        if not fits:
            raise InputFailed(
                f"HR {path} is {pixels.shape[1]}x{pixels.shape[0]} but the output is "
                f"{width}x{height}; the LR must be the HR downscaled by {scale}"
            )
        pixels = pixels[:height, :width]
    return pixels


def score_output(pixels: np.ndarray, hr: np.ndarray, scale: int):
    from fmsr_infer import metrics

    sr = to_8bit(pixels)
    sr = sr[..., :1] if sr.shape[2] in (1, 2) else sr[..., :3]
    if sr.shape[2] != hr.shape[2]:
        sr, hr = rgb_8bit(sr), rgb_8bit(hr)
    try:
        return metrics.score(sr, hr, crop_border=scale)
    except ValueError as exc:
        raise InputFailed(f"cannot score against the HR: {exc}") from exc


def write_grid(grid_path: Path, panels: list[np.ndarray]) -> None:
    """Write panels (bicubic | ours | HR) side by side, 4 px of white between them."""
    height = max(panel.shape[0] for panel in panels)
    gap = np.full((height, 4, 3), 255, dtype=np.uint8)
    row = []
    for panel in panels:
        padded = np.full((height, panel.shape[1], 3), 255, dtype=np.uint8)
        padded[: panel.shape[0]] = panel
        row += [padded, gap]
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(grid_path) as handle:
        write_png(handle, np.concatenate(row[:-1], axis=1))


def write_scores(path: Path, rows: list[tuple[str, object]]) -> object:
    """Write per-image scores and their mean as CSV; returns the mean Scores."""
    from fmsr_infer.metrics import mean_scores

    mean = mean_scores([scores for _, scores in rows])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "psnr_y_db", "ssim_y", "psnr_rgb_db"])
    for name, s in rows + [("mean", mean)]:
        writer.writerow([name, f"{s.psnr_y:.4f}", f"{s.ssim_y:.6f}", f"{s.psnr_rgb:.4f}"])
    with atomic_output(path) as handle:
        handle.write(text.getvalue().encode())
    return mean


# ---------------------------------------------------------------------------------------
# The run


@dataclass
class RunState:
    """Counters and scores of the images processed so far."""

    written: int = 0
    output_pixels: int = 0
    network_calls: int = 0
    tiles: int = 0
    scores: list = field(default_factory=list)  # (relative name, metrics.Scores)


class Runner:
    """Process the jobs of a plan with one upscaler."""

    def __init__(self, upscaler, settings, tiling, options: dict):
        self.upscaler = upscaler
        self.settings = settings
        self.tiling = tiling
        self.max_pixels = options["max_pixels"]
        self.quality = options["quality"]
        self.hr_dir: Path | None = options["hr_dir"]
        self.grid = options["grid"]
        self.output_dir: Path = options["output_dir"]
        self.state = RunState()

    def process(self, job: Job) -> None:
        """Upscale one input and write its output; raises InputFailed with the reason."""
        scale = self.upscaler.info.scale
        try:
            image = load_image(job.source, self.max_pixels)
        except (ImageReadError, OSError) as exc:
            raise InputFailed(str(exc)) from exc
        check_output_kind(job, image)
        job.output.parent.mkdir(parents=True, exist_ok=True)

        # Stream PNG rows to disk unless the whole output is needed afterwards.
        hold = job.ext != "png" or self.hr_dir is not None or self.grid
        height, width = image.height * scale, image.width * scale
        channels = (1 if image.grayscale else 3) + (image.alpha is not None)
        start = time.perf_counter()
        if hold:
            dtype = np.uint16 if image.bit_depth == 16 else np.uint8
            pixels = np.empty((height, width, channels), dtype)

            def keep(row0: int, rows: np.ndarray) -> None:
                pixels[row0 : row0 + rows.shape[0]] = rows

            stats = self.upscaler.upscale_image(image, self.settings, self.tiling, keep)
            write_held(job, pixels, image.icc_profile, self.quality)
        else:
            with atomic_output(job.output) as handle:
                writer = PngWriter(
                    handle, width, height, channels, image.bit_depth, image.icc_profile
                )
                stats = self.upscaler.upscale_image(
                    image, self.settings, self.tiling, lambda row0, rows: writer.write_rows(rows)
                )
                writer.close()
        log.debug(
            "%s -> %s: %dx%d, %d tiles, %d network calls, %.2f s",
            job.source, job.output, width, height, stats.tiles, stats.network_calls,
            time.perf_counter() - start,
        )
        self.state.written += 1
        self.state.output_pixels += height * width
        self.state.network_calls += stats.network_calls
        self.state.tiles += stats.tiles

        if self.hr_dir is not None or self.grid:
            self.compare(job, image, pixels)

    def compare(self, job: Job, image: LRImage, pixels: np.ndarray) -> None:
        """Score the output against its HR and write its grid, as the options ask."""
        scale = self.upscaler.info.scale
        hr = None
        if self.hr_dir is not None:
            hr_path = find_hr(self.hr_dir, job, scale)
            if hr_path is None:
                if self.grid:
                    self.save_grid(job, image, pixels, None)
                raise InputFailed(f"no HR image named {job.source.stem}.* in {self.hr_dir}")
            hr = load_hr(hr_path, pixels.shape[:2], scale)
            self.state.scores.append((job.relative.as_posix(), score_output(pixels, hr, scale)))
        if self.grid:
            self.save_grid(job, image, pixels, hr)

    def save_grid(self, job: Job, image: LRImage, pixels, hr) -> None:
        from fmsr_infer.pipeline import quantize
        from fmsr_infer.tiling import RegionUpsampler

        scale = self.upscaler.info.scale
        height, width = pixels.shape[:2]
        bicubic = RegionUpsampler(image.color, image.max_value, scale).region(0, height, 0, width)
        panels = [rgb_8bit(quantize(bicubic, 8)), rgb_8bit(pixels)]
        if hr is not None:
            panels.append(rgb_8bit(hr))
        grid = self.output_dir / GRID_FOLDER / job.relative.parent / f"{job.output.stem}_grid.png"
        write_grid(grid, panels)


def configure_logging(quiet: bool, verbose: bool) -> None:
    level = logging.INFO
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def install_signal_handlers() -> list[int]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt, so that cleanup runs for both.

    SIGINT is handled even when the parent started fmsr-infer with SIGINT ignored (as
    shells do for background jobs), since Python installs no handler then. Returns the
    list where the received signal numbers are recorded.
    """
    received: list[int] = []

    def handle(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return received


def prepare_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {output_dir}: {exc.strerror or exc}")
    try:
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise UsageError(f"the output folder {output_dir} is not writable: {exc.strerror or exc}")


def resolve_suffix(
    template: str, scale: int, steps: int, sampler: str, seed: int, grid: str = "uniform"
) -> str:
    try:
        suffix = template.format(scale=scale, steps=steps, sampler=sampler, seed=seed, grid=grid)
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(
            f"invalid --suffix {template!r}: {exc}; it may use {{scale}}, {{steps}}, "
            "{sampler}, {grid} and {seed}"
        ) from None
    if "/" in suffix or "\\" in suffix:
        raise UsageError(f"--suffix {template!r} must not contain a path separator")
    return suffix


def resolve_tiling(info, tile, overlap, batch, budget_mb):
    from fmsr_infer.tiling import TileSettings, tile_for_budget

    multiple = info.size_multiple
    if tile is None:
        tile = tile_for_budget(info, budget_mb, batch)
        log.debug("tile %d px from a memory budget of %d MiB and batch %d", tile, budget_mb, batch)
    elif tile and tile % multiple:
        raise UsageError(f"--tile {tile} is not a multiple of the model's size multiple {multiple}")
    if tile and overlap > tile // 2:
        raise UsageError(f"--tile-overlap {overlap} must be at most half of --tile {tile}")
    return TileSettings(tile=tile, overlap=overlap, batch=batch)


def resolve_model(model_path: Path | None) -> tuple[Path, object]:
    """Return the model path (the bundled one by default) and its metadata."""
    if model_path is None:
        model_path = DEFAULT_MODEL
        if not model_path.is_file():
            raise UsageError(
                f"no bundled model at {model_path}; pass --model MODEL.onnx (from fmsr-export)"
            )
    try:
        return model_path, load_info(model_path)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def resolve_settings(info, opts: dict):
    """Build the SampleSettings from the options, falling back to the model's metadata."""
    from fmsr_infer.pipeline import SampleSettings

    grid = opts["time_grid"] or info.grid_default
    shift = opts["shift"]
    temperature = opts["temperature"]
    if temperature is not None and not math.isfinite(temperature):
        raise UsageError(f"--temperature {temperature} is not a number; use a value in [0, 2]")
    if shift is not None and not math.isfinite(shift):
        raise UsageError(f"--shift {shift} is not a number; use a positive value such as 3")
    if shift is not None and grid != "shifted":
        raise UsageError(
            f"--shift {shift:g} applies only to the shifted time grid, not to {grid!r}; "
            "add --time-grid shifted or drop --shift"
        )
    if shift is None and grid == info.grid_default:
        shift = info.shift_default
    settings = SampleSettings(
        steps=opts["steps"] or info.steps_default,
        sampler=opts["sampler"] or info.sampler_default,
        seed=opts["seed"],
        temperature=(
            info.temperature_default if opts["temperature"] is None else opts["temperature"]
        ),
        grid=grid,
        shift=shift,
    )
    try:
        make_grid(settings.grid, settings.steps, settings.shift)
    except ValueError as exc:
        raise UsageError(f"--shift: {exc}") from None
    if info.temperature_trained(settings.temperature) is False:
        source = "--temperature" if temperature is not None else "the model's default temperature"
        log.warning(
            "%s %g is outside this model's training, which saw %s; expect noisy or "
            "broken output",
            source, settings.temperature, info.describe_trained_temperatures(),
        )
    return settings


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def describe_grid(settings) -> str:
    if settings.grid != "shifted":
        return f"the {settings.grid} grid"
    shift = DEFAULT_SHIFT if settings.shift is None else settings.shift
    return f"the shifted grid (shift {shift:g})"


def load_backend(name: str, model_path: Path, info, threads: int):
    from fmsr_infer.backends import create_backend

    try:
        return create_backend(name, model_path, info, threads=threads)
    except (ModelError, ValueError, RuntimeError, ImportError, OSError) as exc:
        raise UsageError(str(exc)) from None


def report(state: RunState, plan: Plan, failures: list[str], seconds: float, settings, out) -> None:
    rate = state.output_pixels / 1e6 / max(seconds, 1e-9)
    if log.level < logging.ERROR:
        click.echo(
            f"{plural(state.written, 'image')} in {seconds:.1f} s ({rate:.3f} output "
            f"megapixels/s), {settings.sampler} {plural(settings.steps, 'step')} on "
            f"{describe_grid(settings)}, {plural(state.tiles, 'tile')}, "
            f"{plural(state.network_calls, 'network call')}, temperature {settings.temperature}, "
            f"{len(plan.skipped)} skipped, outputs in {out}"
        )
    if failures:
        total = len(plan.jobs) + len(plan.failures)
        click.echo(f"fmsr-infer: {len(failures)} of {total} inputs failed:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--model", "model_path", type=click.Path(path_type=Path), default=None, show_default=False,
    help="ONNX model from fmsr-export, with its .json beside it. Default: the bundled model.",
)
@click.option(
    "-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("results"),
    help="Folder for the outputs; subfolders of INPUT are mirrored in it with --recursive.",
)
@click.option(
    "--suffix", default=DEFAULT_SUFFIX,
    help="Added to each input's stem to name its output; may use {scale}, {steps}, "
    "{sampler}, {grid} and {seed}.",
)
@click.option(
    "--ext", "ext_option", type=click.Choice(["png", "jpg", "webp", "auto"]), default="png",
    help="Output format. auto: jpg for JPEG inputs, webp for WebP inputs, png otherwise. "
    "Only png keeps 16 bits; jpg rejects images with alpha.",
)
@click.option(
    "--quality", type=click.IntRange(1, 100), default=95,
    help="JPEG and WebP quality, 1 to 100.",
)
@click.option("--recursive", is_flag=True, help="Also process subfolders of INPUT.")
@click.option(
    "--skip-existing", is_flag=True,
    help="Skip inputs whose output file exists, to resume an interrupted folder run.",
)
@click.option(
    "--steps", type=click.IntRange(1, 1000), default=None, show_default=False,
    help="Intervals of the time grid over t in [0, 1]; network calls per interval: euler 1, "
    "heun and midpoint 2, heun_euler_last 2 (1 on the last), rk4 4. Default: the model's "
    "recommendation (bundled model: midpoint, 3 steps, 6 calls).",
)
@click.option(
    "--sampler", type=click.Choice(tuple(SAMPLERS)), default=None, show_default=False,
    help="ODE sampler. Default: the model's recommendation.",
)
@click.option(
    "--time-grid", "time_grid", type=click.Choice(tuple(GRIDS)), default=None,
    show_default=False,
    help="Time grid: uniform, shifted (denser near the noise end for --shift above 1) or "
    "image_end (denser near the image). Default: the model's recommendation.",
)
@click.option(
    "--shift", type=click.FloatRange(0.0, None, min_open=True), default=None,
    show_default=False,
    help="Shift s of the shifted grid, t' = t / (t + s (1 - t)). Default: 3.",
)
@click.option(
    "--seed", type=click.IntRange(0, 2**64 - 1), default=0,
    help="Seed of the noise field. The same seed and tile settings give the same output.",
)
@click.option(
    "--temperature", type=click.FloatRange(0.0, 2.0), default=None, show_default=False,
    help="Scale of the initial noise: 0 gives the conditional mean (best PSNR), 1 samples "
    "the trained distribution (sharper). Default: the model's recommendation.",
)
@click.option(
    "--batch", type=click.IntRange(1, 256), default=1,
    help="Tiles per network call.",
)
@click.option(
    "--tile", type=click.IntRange(0, None), default=None, show_default=False,
    help="Tile side in output pixels, a multiple of the model's size multiple; 0 runs "
    "each image whole. Default: the largest tile that fits --memory-budget.",
)
@click.option(
    "--tile-overlap", type=click.IntRange(0, None), default=DEFAULT_OVERLAP,
    help="Overlap of neighbouring tiles in output pixels, blended with a feathered weight.",
)
@click.option(
    "--memory-budget", "memory_budget_mb", type=click.IntRange(16, None),
    default=DEFAULT_MEMORY_BUDGET_MB,
    help="Working memory of one tile batch in MiB, estimated from the model's widths, "
    "which sets the tile size when --tile is not given. The blend of a row of tiles "
    "takes about 32 bytes x tile x output width on top.",
)
@click.option(
    "--backend", "backend_name", type=click.Choice(tuple(BACKENDS)), default="auto",
    help="Network backend; auto picks the fastest available.",
)
@click.option("--threads", type=click.IntRange(0, None), default=0, help="CPU threads; 0 = all.")
@click.option(
    "--max-pixels", type=click.IntRange(0, None), default=DEFAULT_MAX_PIXELS,
    help="Largest input accepted, in pixels (width x height), which stops decompression "
    "bombs; 0 = no limit.",
)
@click.option(
    "--hr", "hr_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None, show_default=False,
    help="Folder of HR images named as the inputs (or without their trailing x4): scores "
    "each output (PSNR and SSIM on BT.601 Y, RGB PSNR, 4 px border cropped) into "
    f"OUTPUT/{SCORES_CSV} and prints the mean.",
)
@click.option(
    "--grid", is_flag=True,
    help=f"Also write bicubic | ours | HR comparison grids to OUTPUT/{GRID_FOLDER}/.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; errors only.")
@click.option("--verbose", "-v", is_flag=True, help="Debug messages: tiles, timings per image.")
def main(**options):
    """Super-resolve INPUT (an image or a folder of images) by 4x.

    Outputs are named {stem}{suffix}.{ext}, by default {stem}_x4_s{steps}.png. Inputs
    are PNG, JPEG, BMP, WebP and TIFF files: grayscale stays grayscale, alpha is kept,
    16-bit PNGs give 16-bit PNGs, and EXIF orientation is applied. Files that fail are
    listed at the end and make the exit status 1.
    """
    if options["quiet"] and options["verbose"]:
        raise click.UsageError("--quiet and --verbose exclude each other")
    configure_logging(options["quiet"], options["verbose"])
    received = install_signal_handlers()
    try:
        status = run(options)
    except UsageError as exc:
        click.echo(f"fmsr-infer: error: {exc}", err=True)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        click.echo(
            f"\nfmsr-infer: interrupted by {signal.Signals(signum).name}; finished outputs "
            "are complete, none is partial",
            err=True,
        )
        status = 128 + signum
    sys.exit(status)


def run(opts: dict) -> int:
    """Run fmsr-infer with the parsed options; returns the exit status."""
    from PIL import Image

    from fmsr_infer.pipeline import Upscaler

    # --max-pixels replaces Pillow's limit (a warning at 89 million pixels, an error at
    # twice that), so that raising it is enough to process a larger trusted image.
    Image.MAX_IMAGE_PIXELS = None

    model_path, info = resolve_model(opts["model_path"])
    settings = resolve_settings(info, opts)
    log.debug(
        "%s, %d steps on the %s grid: %d network calls per tile batch",
        settings.sampler, settings.steps, settings.grid,
        network_calls(settings.sampler, settings.steps),
    )
    tiling = resolve_tiling(
        info, opts["tile"], opts["tile_overlap"], opts["batch"], opts["memory_budget_mb"]
    )
    suffix = resolve_suffix(
        opts["suffix"], info.scale, settings.steps, settings.sampler, settings.seed,
        settings.grid,
    )
    output_dir: Path = opts["output_dir"]
    prepare_output_dir(output_dir)
    backend = load_backend(opts["backend_name"], model_path, info, opts["threads"])
    tiling = fit_to_backend(tiling, backend, info.size_multiple)

    plan = plan_jobs(
        opts["input_path"], output_dir, opts["recursive"], suffix, opts["ext_option"],
        opts["skip_existing"],
    )
    if not plan.jobs and not plan.failures and not plan.skipped:
        raise UsageError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {opts['input_path']}"
        )
    for line in plan.skipped:
        log.info("skipped %s", line)
    for line in plan.failures:
        log.error("failed %s", line)

    runner = Runner(Upscaler(backend, info), settings, tiling, opts)
    failures = list(plan.failures)
    start = time.perf_counter()
    hidden = log.level >= logging.ERROR
    # A bar drawn on a terminal only, since log lines would break it up in a file.
    show_bar = not hidden and sys.stderr.isatty()
    bar = click.progressbar(plan.jobs, label="fmsr-infer", hidden=not show_bar, file=sys.stderr)
    with bar:
        for job in bar:
            try:
                runner.process(job)
            except PER_INPUT_ERRORS as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                failures.append(f"{job.source}: {reason}")
                log.error("failed %s: %s", job.source, reason)
                log.debug("traceback of the failure of %s", job.source, exc_info=True)
    seconds = time.perf_counter() - start

    if runner.state.scores:
        mean = write_scores(output_dir / SCORES_CSV, runner.state.scores)
        if not hidden:
            click.echo(
                f"mean of {len(runner.state.scores)} images: PSNR-Y {mean.psnr_y:.2f} dB, "
                f"SSIM-Y {mean.ssim_y:.4f}, PSNR-RGB {mean.psnr_rgb:.2f} dB "
                f"(per image in {output_dir / SCORES_CSV})"
            )
    report(runner.state, plan, failures, seconds, settings, output_dir)
    return EXIT_FAILED_INPUTS if failures else 0


if __name__ == "__main__":
    main()
