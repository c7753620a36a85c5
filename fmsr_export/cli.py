"""`fmsr-export`: checkpoint to ONNX and, with --fp16, to an fp16 TensorRT engine."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from fmsr_export.trt_build import engine_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--ckpt",
    "ckpt_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint written by fmsr-train (runs/sr_x4/checkpoints/step_N.pt).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="ONNX file to write; default: the checkpoint path with .onnx. "
    "The metadata goes beside it as .json.",
)
@click.option(
    "--fp16",
    is_flag=True,
    help="Also write the mixed-precision model <out>_fp16.onnx, check it against fp32 on "
    "photos, and build the fp16 TensorRT engine <out>_fp16.engine on this machine's GPU.",
)
@click.option(
    "--no-engine",
    is_flag=True,
    help="With --fp16: stop after the fp16 ONNX (for ONNX Runtime CUDA); build no engine.",
)
@click.option(
    "--check-images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of photos for the fp16 check (their central 64x64 crops are the LR inputs). "
    "Default: scikit-image's sample photos.",
)
@click.option(
    "--min-fp16-psnr",
    type=float,
    default=45.0,
    show_default=True,
    help="Lowest PSNR in dB between the fp32 and fp16 images (the model's recommended "
    "sampler and steps) that the check accepts.",
)
@engine_options
@click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
def main(
    ckpt_path,
    out_path,
    fp16,
    no_engine,
    check_images,
    min_fp16_psnr,
    gpu_mem,
    gpu_reserve,
    workspace,
    opt_level,
    max_tile,
    max_batch,
    timing_cache,
    quiet,
):
    """Export the EMA network of a checkpoint to ONNX and check it against PyTorch.

    The engine options apply with --fp16 only.
    """
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    if no_engine and not fp16:
        click.echo("fmsr-export: error: --no-engine applies only with --fp16", err=True)
        sys.exit(2)

    from fmsr_export.export import ExportError, export

    try:
        path, info = export(ckpt_path, out_path)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        click.echo(f"fmsr-export: error: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"wrote {path} (step {info.training_step}, ONNX Runtime vs PyTorch max abs error "
        f"{info.parity_max_abs_error:.2e})"
    )
    if not fp16:
        return

    # The fp16 ONNX, checked on the CPU before anything needs a GPU.
    from fmsr_export import fp16 as fp16_export

    try:
        images = fp16_export.load_check_images(check_images)
        fp16_path, _, accuracy = fp16_export.export_fp16(
            path, info, images, min_psnr_db=min_fp16_psnr
        )
    except (fp16_export.Fp16Error, ValueError, OSError) as exc:
        click.echo(f"fmsr-export: error: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"wrote {fp16_path} (fp16 vs fp32 on {len(images)} photos, ONNX Runtime CPU: max abs "
        f"error of one call {accuracy.max_abs_error:.2e}, min PSNR of the {accuracy.steps}-step "
        f"images {accuracy.min_psnr_db:.2f} dB)"
    )
    if no_engine:
        return

    # The engine, on this machine's GPU.
    from fmsr_export.trt_build import EngineBuildError, MemoryBudget, build_engine
    from fmsr_infer.backends import BackendUnavailable

    try:
        budget = MemoryBudget.from_gib(gpu_mem, gpu_reserve, workspace)
        engine_path, meta = build_engine(
            fp16_path, None, budget, opt_level, timing_cache, max_tile=max_tile, max_batch=max_batch
        )
    except BackendUnavailable as exc:
        click.echo(
            f"fmsr-export: error: --fp16 wrote and checked {fp16_path}, but built no TensorRT "
            f"engine: {exc}. On the machine with the GPU, install TensorRT and cuda-python "
            f"(pip install 'fmsr[gpu]') and run: python -m fmsr_export.trt_build {fp16_path}",
            err=True,
        )
        sys.exit(1)
    except (EngineBuildError, ValueError, OSError) as exc:
        click.echo(f"fmsr-export: error: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"wrote {engine_path} (TensorRT {meta.tensorrt_version}, {meta.gpu_name}, profile max "
        f"batch x height x width {meta.profile['max']})"
    )


if __name__ == "__main__":
    main()
