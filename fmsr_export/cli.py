"""`fmsr-export`: checkpoint to ONNX (and, later, TensorRT)."""

from __future__ import annotations

import logging
import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--ckpt", "ckpt_path", required=True, type=click.Path(dir_okay=False),
    help="Checkpoint written by fmsr-train (runs/sr_x4/checkpoints/step_N.pt).",
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None,
    help="ONNX file to write; default: the checkpoint path with .onnx. "
    "The metadata goes beside it as .json.",
)
@click.option("--fp16", is_flag=True, help="Also build an fp16 TensorRT engine.")
@click.option("--quiet", is_flag=True, help="Log warnings and errors only.")
def main(ckpt_path, out_path, fp16, quiet):
    """Export the EMA network of a checkpoint to ONNX and check it against PyTorch."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s"
    )
    if fp16:
        click.echo(
            "fmsr-export: error: --fp16 (TensorRT engines) is not supported by this version "
            "yet; export without --fp16 and run the fp32 ONNX model with fmsr-infer",
            err=True,
        )
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


if __name__ == "__main__":
    main()
