"""The metadata that travels beside an exported ONNX model, as `<model>.json`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmsr_infer.samplers import GRIDS, SAMPLERS, make_grid

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

    The sampler recommendation is `sampler_default` over `steps_default` intervals of
    the time grid `grid_default` (with `shift_default` for the "shifted" grid) at
    `temperature_default`. `temperatures_trained` says which initial noise scales the
    network saw in training: {"values": [0.0, 1.0]} for the scales 0 and 1 only,
    {"range": [0.0, 1.0]} for every scale in between too, None when unknown. Metadata
    written before these three fields existed loads with their defaults.
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
    grid_default: str = "uniform"
    shift_default: float | None = None
    temperatures_trained: dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def temperature_trained(self, temperature: float) -> bool | None:
        """Return whether training showed the network this noise scale; None if unknown."""
        trained = self.temperatures_trained
        if not trained:
            return None
        if "range" in trained:
            low, high = trained["range"]
            return low - 1e-6 <= temperature <= high + 1e-6
        return any(abs(temperature - v) <= 1e-6 for v in trained.get("values", []))

    def describe_trained_temperatures(self) -> str:
        trained = self.temperatures_trained or {}
        if "range" in trained:
            low, high = trained["range"]
            return f"every noise scale from {low:g} to {high:g}"
        values = [f"{v:g}" for v in trained.get("values", [])]
        if len(values) == 1:
            return f"the noise scale {values[0]} only"
        return "the noise scales " + ", ".join(values[:-1]) + f" and {values[-1]} only"


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
    fields = dataclasses.fields(ModelInfo)
    names = {f.name for f in fields}
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(raw))
    if missing:
        raise ModelError(f"metadata {meta} lacks {missing}; re-export the model")
    info = ModelInfo(**{k: v for k, v in raw.items() if k in names})
    problem = _check_info(info)
    if problem:
        raise ModelError(f"metadata {meta}: {problem}; re-export the model")
    return info


def _check_info(info: ModelInfo) -> str | None:
    """Return what is wrong with the metadata's values, or None."""
    if info.target not in ("image", "residual") or info.prediction not in ("velocity", "x1"):
        return f"unknown target {info.target!r} or prediction {info.prediction!r}"
    if info.sampler_default not in SAMPLERS:
        return f"unknown sampler_default {info.sampler_default!r}; known: {tuple(SAMPLERS)}"
    if info.grid_default not in GRIDS:
        return f"unknown grid_default {info.grid_default!r}; known: {tuple(GRIDS)}"
    if not isinstance(info.steps_default, int) or info.steps_default < 1:
        return f"steps_default is {info.steps_default!r}, not a positive integer"
    if info.shift_default is not None and info.grid_default != "shifted":
        return f"shift_default is set but grid_default is {info.grid_default!r}, not 'shifted'"
    try:
        make_grid(info.grid_default, info.steps_default, info.shift_default)
    except (TypeError, ValueError) as exc:
        return f"shift_default {info.shift_default!r}: {exc}"
    temperature = info.temperature_default
    if not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0:
        return f"temperature_default is {temperature!r}, not a number in [0, 2]"
    trained = info.temperatures_trained
    if trained is not None:
        ok = (
            isinstance(trained, dict)
            and len(trained) == 1
            and (
                ("range" in trained and len(trained["range"]) == 2
                 and trained["range"][0] <= trained["range"][1])
                or ("values" in trained and len(trained["values"]) >= 1)
            )
        )
        if not ok:
            return (
                f"temperatures_trained is {trained!r}; expected "
                '{"values": [...]} or {"range": [low, high]}'
            )
    return None
