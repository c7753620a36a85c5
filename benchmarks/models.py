"""The network under test: one ONNX model for the runtime and the same weights in torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from fmsr_infer.model_info import ModelInfo, load_info

log = logging.getLogger(__name__)


@dataclass
class BenchModel:
    """An ONNX model with its metadata and, when the checkpoint is known, its torch network.

    `torch_model` is the EMA network in eval mode on the CPU, or None with the reason in
    `torch_missing_reason`; the eager backends need it.
    """

    onnx_path: Path
    info: ModelInfo
    source: str
    torch_model: torch.nn.Module | None
    ckpt_path: Path | None
    torch_missing_reason: str = ""


def fresh_checkpoint(path: Path, seed: int) -> Path:
    """Write a checkpoint of a freshly initialised UNetSR with the default configuration.

    The output convolution is re-initialised with PyTorch's default Conv2d init instead
    of the zeros that training starts from. A zero output layer makes every backend
    return exactly zero, so the parity check would pass whatever the backend computes.
    """
    from fmsr_train import checkpoint as ckpt
    from fmsr_train.config import Config
    from fmsr_train.model import UNetSR

    config = Config()
    torch.manual_seed(seed)
    model = UNetSR(config.model).eval()
    model.conv_out.reset_parameters()
    state = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "ema": model.state_dict(),
        "step": 0,
    }
    ckpt.save_atomic(state, path)
    return path


def load_bench_model(
    model_path: Path | None, ckpt_path: Path | None, work_dir: Path, seed: int
) -> BenchModel:
    """Resolve `--model` and `--ckpt` into the model that every backend runs.

    - neither: a fresh default network (see `fresh_checkpoint`), exported to work_dir;
    - `--ckpt` only: that checkpoint, exported to work_dir with fmsr-export's checks;
    - `--model` with `--ckpt`: both as given (the JSON's checkpoint sha256 must match);
    - `--model` only: the runtime rows run, the eager rows report the missing checkpoint.
    """
    from fmsr_export.export import export, load_ema_model, sha256_file

    source = "given ONNX model"
    if model_path is None:
        if ckpt_path is None:
            ckpt_path = fresh_checkpoint(work_dir / "fresh_default.pt", seed)
            source = f"fresh UNetSR(ModelConfig()), torch.manual_seed({seed}), untrained"
        else:
            source = f"checkpoint {ckpt_path}"
        log.info("exporting %s to ONNX", ckpt_path)
        model_path, _ = export(ckpt_path, work_dir / "bench_model.onnx")
    info = load_info(model_path)

    if ckpt_path is None:
        return BenchModel(
            Path(model_path), info, source, None, None,
            torch_missing_reason="no --ckpt given; the eager backends need the checkpoint "
            "that the ONNX model was exported from",
        )
    ckpt_sha = sha256_file(ckpt_path)
    if info.checkpoint_sha256 and ckpt_sha != info.checkpoint_sha256:
        raise ValueError(
            f"--ckpt {ckpt_path} (sha256 {ckpt_sha[:12]}) is not the checkpoint that "
            f"{model_path} was exported from (sha256 {info.checkpoint_sha256[:12]}); "
            "pass the matching pair or only one of them"
        )
    model, _ = load_ema_model(ckpt_path)
    return BenchModel(Path(model_path), info, source, model, Path(ckpt_path))
