"""The metadata that travels beside an exported ONNX model, as `<model>.json`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METADATA_FORMAT = "fmsr-onnx-1"
INPUT_NAMES = ("x_t", "cond", "t")


class ModelError(ValueError):
    """A model file or its metadata is missing or invalid."""


@dataclass
class ModelInfo:
    """Runtime metadata of an exported network.

    Inputs x_t [N, 3, H, W], cond [N, 3, H, W] and t [N], float32; the output,
    [N, 3, H, W], is the velocity or x_1 depending on `prediction`. Images are in
    network units `value_range` ([-1, 1]); H and W must be multiples of `size_multiple`.
    """

    format: str
    scale: int
    size_multiple: int
    value_range: list[float]
    input_names: list[str]
    output_name: str
    target: str
    prediction: str
    residual_scale: float
    t_floor: float
    sampler_default: str
    steps_default: int
    temperature_default: float
    precision: str
    training_step: int
    checkpoint_sha256: str
    onnx_sha256: str
    parity_max_abs_error: float
    model_config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def load_info(model_path: str | Path) -> ModelInfo:
    """Read and validate the JSON metadata beside `model_path`."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"model not found: {model_path}")
    meta = metadata_path(model_path)
    if not meta.is_file():
        raise ModelError(
            f"metadata {meta} not found beside the model; re-export it with "
            "fmsr-export --ckpt CHECKPOINT, which writes both"
        )
    try:
        raw = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"metadata {meta} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != METADATA_FORMAT:
        raise ModelError(
            f"metadata {meta} has format {raw.get('format') if isinstance(raw, dict) else None!r}, "
            f"expected {METADATA_FORMAT!r}; re-export the model with this version of fmsr-export"
        )
    names = {f.name for f in dataclasses.fields(ModelInfo)}
    missing = sorted(names - set(raw) - {"model_config"})
    if missing:
        raise ModelError(f"metadata {meta} lacks {missing}; re-export the model")
    info = ModelInfo(**{k: v for k, v in raw.items() if k in names})
    if info.target not in ("image", "residual") or info.prediction not in ("velocity", "x1"):
        raise ModelError(
            f"metadata {meta}: unknown target {info.target!r} or prediction {info.prediction!r}"
        )
    return info
