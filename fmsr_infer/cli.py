"""`fmsr-infer`: super-resolve an image or a folder of images by 4x."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from fmsr_infer.model_info import ModelError, load_info
from fmsr_infer.samplers import SAMPLERS

log = logging.getLogger("fmsr_infer")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MODEL = Path(__file__).parent / "models" / "default.onnx"


def list_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def save_png_atomic(image: np.ndarray, path: Path) -> None:
    """Write a uint8 image so that an interrupted run never leaves a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--model", "model_path", type=click.Path(path_type=Path), default=None,
    help="ONNX model from fmsr-export (its .json beside it). Default: the bundled model.",
)
@click.option(
    "-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"), show_default=True, help="Folder for the outputs.",
)
@click.option(
    "--steps", type=click.IntRange(1, 1000), default=None,
    help="Sampler intervals over t in [0, 1] (Euler: one network call each, Heun: two). "
    "Default: the model's recommendation.",
)
@click.option(
    "--sampler", type=click.Choice(SAMPLERS), default=None,
    help="ODE sampler. Default: the model's recommendation.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the noise field.")
@click.option(
    "--temperature", type=click.FloatRange(0.0, 2.0), default=None,
    help="Scale of the initial noise: 0 gives the conditional mean (best PSNR), 1 samples "
    "the trained distribution (sharper). Default: the model's recommendation.",
)
@click.option("--threads", type=int, default=0, show_default=True, help="CPU threads; 0 = all.")
@click.option("--quiet", is_flag=True, help="No progress bar; errors only.")
def main(input_path, model_path, output_dir, steps, sampler, seed, temperature, threads, quiet):
    """Super-resolve INPUT (an image or a folder of images) by 4x.

    Outputs are PNG files named {stem}_x4_s{steps}.png.
    """
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    from fmsr_infer.backends import create_backend
    from fmsr_infer.pipeline import SampleSettings, Upscaler

    model_path = model_path or DEFAULT_MODEL
    try:
        info = load_info(model_path)
        backend = create_backend("auto", model_path, info, threads=threads)
    except ModelError as exc:
        click.echo(f"fmsr-infer: error: {exc}", err=True)
        sys.exit(2)
    settings = SampleSettings(
        steps=steps or info.steps_default,
        sampler=sampler or info.sampler_default,
        seed=seed,
        temperature=info.temperature_default if temperature is None else temperature,
    )
    upscaler = Upscaler(backend, info)

    inputs = list_inputs(input_path)
    if not inputs:
        click.echo(f"fmsr-infer: error: no images ({', '.join(IMAGE_EXTENSIONS)}) in {input_path}", err=True)
        sys.exit(2)
    output_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    out_pixels = 0
    calls = 0
    failures: list[str] = []
    with click.progressbar(inputs, label="fmsr-infer", hidden=quiet, file=sys.stderr) as bar:
        for path in bar:
            try:
                with Image.open(path) as img:
                    lr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
                result = upscaler.upscale(lr, settings)
            except (OSError, ValueError) as exc:
                failures.append(f"{path}: {exc}")
                click.echo(f"\nfmsr-infer: failed {path}: {exc}", err=True)
                continue
            out = np.clip(np.floor(result.image * 255.0 + 0.5), 0, 255).astype(np.uint8)
            save_png_atomic(out, output_dir / f"{path.stem}_x4_s{settings.steps}.png")
            out_pixels += out.shape[0] * out.shape[1]
            calls = result.network_calls

    seconds = time.perf_counter() - start
    done = len(inputs) - len(failures)
    click.echo(
        f"{done} images in {seconds:.1f} s ({out_pixels / 1e6 / max(seconds, 1e-9):.3f} output "
        f"megapixels/s), {settings.sampler} {settings.steps} steps ({calls} network calls per "
        f"image), temperature {settings.temperature}, outputs in {output_dir}",
        err=quiet,
    )
    if failures:
        click.echo(f"fmsr-infer: {len(failures)} of {len(inputs)} images failed", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
