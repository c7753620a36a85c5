"""Export the EMA velocity network of a checkpoint to ONNX, with its runtime metadata."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmsr_infer.model_info import (
    INPUT_NAMES,
    METADATA_FORMAT,
    ModelInfo,
    metadata_path,
    sha256_file,
)
from fmsr_train import checkpoint as ckpt
from fmsr_train.config import from_dict
from fmsr_train.model import UNetSR

log = logging.getLogger(__name__)

OPSET = 18
# ONNX Runtime's fp32 convolutions may sum in another order than PyTorch's.
MAX_PARITY_ERROR = 1e-4


class ExportError(RuntimeError):
    """An export check failed; the message names the check and the measured error."""


def load_ema_model(ckpt_path: str | Path) -> tuple[UNetSR, dict[str, Any]]:
    """Build the network of a checkpoint with its EMA weights, in eval mode on the CPU."""
    state = ckpt.load(ckpt_path)
    for key in ("config", "ema", "step"):
        if key not in state:
            raise ExportError(f"{ckpt_path} has no {key!r} entry; it is not an fmsr checkpoint")
    config = from_dict(state["config"])
    model = UNetSR(config.model)
    model.load_state_dict(state["ema"])
    return model.eval(), state


def export_onnx(model: UNetSR, path: Path, output_name: str) -> None:
    """Trace the network to ONNX with dynamic batch, height and width."""
    from torch.export import Dim

    example = (torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), torch.zeros(1))
    batch = Dim("batch", min=1, max=1024)
    height = Dim("height_blocks", min=1, max=8192)
    width = Dim("width_blocks", min=1, max=8192)
    multiple = model.size_multiple
    image_dims = {0: batch, 2: multiple * height, 3: multiple * width}
    dynamic_shapes = {"x_t": image_dims, "cond": image_dims, "t": {0: batch}}
    onnx_program = torch.onnx.export(
        model,
        example,
        input_names=list(INPUT_NAMES),
        output_names=[output_name],
        dynamic_shapes=dynamic_shapes,
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(str(path))


def check_parity(model: UNetSR, onnx_path: Path, sizes, seed: int = 0) -> float:
    """Return the max abs error of ONNX Runtime against PyTorch over several input sizes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch, height, width in sizes:
        x_t = torch.randn(batch, 3, height, width, generator=generator)
        cond = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
        t = torch.rand(batch, generator=generator)
        with torch.no_grad():
            expected = model(x_t, cond, t).numpy()
        (actual,) = session.run(None, {"x_t": x_t.numpy(), "cond": cond.numpy(), "t": t.numpy()})
        error = float(np.max(np.abs(actual - expected)))
        log.info("ONNX Runtime vs PyTorch at %dx3x%dx%d: max abs error %.2e", batch, height, width, error)
        worst = max(worst, error)
    return worst


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates the file 0600; give it the usual umask-based mode instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(ckpt_path: str | Path, out_path: str | Path | None = None) -> tuple[Path, ModelInfo]:
    """Export a checkpoint to ONNX plus its JSON metadata; returns (onnx path, info).

    Runs the ONNX checker and the ONNX Runtime parity check before anything is
    written to `out_path`, so a failed export leaves no file behind.
    """
    import onnx

    ckpt_path = Path(ckpt_path)
    model, state = load_ema_model(ckpt_path)
    config = from_dict(state["config"])
    out_path = Path(out_path) if out_path else ckpt_path.with_suffix(".onnx")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    output_name = "velocity" if config.fm.prediction == "velocity" else "x1"

    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        export_onnx(model, tmp_onnx, output_name)
        onnx.checker.check_model(str(tmp_onnx), full_check=True)

        # Two sizes that differ in batch, height and width.
        error = check_parity(model, tmp_onnx, sizes=[(2, 3 * 8, 5 * 8), (1, 64, 44)])
        if not error <= MAX_PARITY_ERROR:
            raise ExportError(
                f"ONNX Runtime differs from PyTorch by {error:.2e} (max allowed "
                f"{MAX_PARITY_ERROR:.0e}); the exported graph is wrong, do not ship it"
            )

        info = ModelInfo(
            format=METADATA_FORMAT,
            scale=4,
            size_multiple=model.size_multiple,
            value_range=[-1.0, 1.0],
            input_names=list(INPUT_NAMES),
            output_name=output_name,
            target=config.fm.target,
            prediction=config.fm.prediction,
            residual_scale=config.fm.residual_scale,
            t_floor=config.fm.t_floor,
            sampler_default=config.fm.sampler_default,
            steps_default=config.fm.sampler_default_steps,
            temperature_default=config.fm.temperature_default,
            grid_default=config.fm.sampler_default_grid,
            shift_default=config.fm.sampler_default_shift,
            temperatures_trained=config.temperatures_trained(),
            precision="fp32",
            training_step=int(state["step"]),
            checkpoint_sha256=sha256_file(ckpt_path),
            onnx_sha256=sha256_file(tmp_onnx),
            parity_max_abs_error=error,
            model_config=config.to_dict()["model"],
        )
        _write_atomic(out_path, lambda p: os.replace(tmp_onnx, p))
        meta = metadata_path(out_path)
        _write_atomic(meta, lambda p: p.write_text(json.dumps(info.to_dict(), indent=2) + "\n"))
    log.info("wrote %s and %s (max abs error %.2e)", out_path, meta, error)
    return out_path, info
