"""Typed training configuration, read from YAML with command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fmsr_infer.flow import PREDICTIONS, TARGETS
from fmsr_infer.samplers import GRIDS, SAMPLERS, make_grid
from fmsr_train.model import ModelConfig


@dataclass
class DataConfig:
    train_dir: str = "data/train"
    # Optional LR folder paired with train_dir (DIV2K layout: X4/0001x4.png or 0001x4.png);
    # without it, LR is made from HR by MATLAB-compatible bicubic downscaling.
    train_lr_dir: str | None = None
    val_dir: str | None = None
    val_lr_dir: str | None = None
    hr_crop: int = 192
    batch_size: int = 16
    grad_accum: int = 1
    num_workers: int = 2


NOISE_SCALES = ("one", "uniform")


@dataclass
class FlowConfig:
    target: str = "residual"  # "image" or "residual"
    prediction: str = "x1"  # "velocity" or "x1"
    residual_scale: float = 4.0
    t_floor: float = 0.05  # floor on 1 - t when the velocity is derived from x_1
    # Fraction of training samples that start from x_0 = 0 instead of N(0, I), which
    # teaches the network the temperature-0 path (the conditional mean).
    zero_noise_prob: float = 0.3
    # Scale s of the other samples' noise x_0 = s * N(0, I): "one" (s = 1), or "uniform"
    # (s ~ U(0, 1) per sample), which trains every inference temperature in [0, 1].
    noise_scale: str = "one"
    # The sampler recommendation written to the exported metadata and used by the
    # evaluation during training: sampler, intervals, time grid (and the shift of the
    # "shifted" grid) and temperature.
    sampler_default: str = "midpoint"
    sampler_default_steps: int = 3
    sampler_default_grid: str = "uniform"
    sampler_default_shift: float | None = None
    temperature_default: float = 0.0


@dataclass
class TrainConfig:
    max_steps: int = 10000
    max_minutes: float = 0.0  # wall-clock budget; 0 means none
    lr: float = 2e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05  # final lr of the cosine decay, relative to lr
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    amp: str = "auto"  # "auto", "off", "fp16" or "bf16"; CUDA only
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    grad_checkpoint: bool = False
    channels_last: bool = False
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3
    max_nonfinite: int = 10  # consecutive non-finite losses before the run stops
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


@dataclass
class EvalConfig:
    every_steps: int = 1000
    max_images: int = 0  # 0 scores every image of data.val_dir
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fm: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str = "runs/sr_x4"

    def validate(self) -> "Config":
        if self.fm.target not in TARGETS:
            raise ValueError(f"fm.target is {self.fm.target!r}; use one of {TARGETS}")
        if self.fm.prediction not in PREDICTIONS:
            raise ValueError(f"fm.prediction is {self.fm.prediction!r}; use one of {PREDICTIONS}")
        if self.fm.sampler_default not in SAMPLERS:
            raise ValueError(
                f"fm.sampler_default is {self.fm.sampler_default!r}; use one of {SAMPLERS}"
            )
        if self.fm.sampler_default_grid not in GRIDS:
            raise ValueError(
                f"fm.sampler_default_grid is {self.fm.sampler_default_grid!r}; "
                f"use one of {GRIDS}"
            )
        if self.fm.sampler_default_steps < 1:
            raise ValueError(
                f"fm.sampler_default_steps is {self.fm.sampler_default_steps}; use 1 or more"
            )
        try:
            make_grid(
                self.fm.sampler_default_grid, self.fm.sampler_default_steps,
                self.fm.sampler_default_shift,
            )
        except ValueError as exc:
            raise ValueError(f"fm.sampler_default_shift: {exc}") from None
        if self.fm.noise_scale not in NOISE_SCALES:
            raise ValueError(f"fm.noise_scale is {self.fm.noise_scale!r}; use one of {NOISE_SCALES}")
        if self.data.hr_crop % 4 or self.data.hr_crop < 16:
            raise ValueError(
                f"data.hr_crop is {self.data.hr_crop}; use a multiple of 4 of at least 16"
            )
        for name in ("batch_size", "grad_accum"):
            if getattr(self.data, name) < 1:
                raise ValueError(f"data.{name} is {getattr(self.data, name)}; use 1 or more")
        if self.train.amp not in ("auto", "off", "fp16", "bf16"):
            raise ValueError(f"train.amp is {self.train.amp!r}; use auto, off, fp16 or bf16")
        if not 0.0 <= self.train.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay is {self.train.ema_decay}; use a value in [0, 1)")
        if not 0.0 <= self.fm.zero_noise_prob <= 1.0:
            raise ValueError(f"fm.zero_noise_prob is {self.fm.zero_noise_prob}; use [0, 1]")
        return self

    def check_default_temperature(self) -> "Config":
        """Raise ValueError when training never shows the network fm.temperature_default.

        `load_config` runs this check for the configs that start training; checkpoints
        of older configs still load through `from_dict`.
        """
        trained = self.temperatures_trained()
        temperature = self.fm.temperature_default
        if "range" in trained:
            seen = trained["range"][0] <= temperature <= trained["range"][1]
        else:
            seen = temperature in trained["values"]
        if not seen:
            if "range" in trained:
                trained_scales = f"noise scales from {trained['range'][0]:g} to {trained['range'][1]:g}"
            else:
                trained_scales = "noise scales " + ", ".join(f"{v:g}" for v in trained["values"])
            if temperature == 0:
                fix = "set fm.zero_noise_prob above 0"
            elif temperature == 1:
                fix = "set fm.zero_noise_prob below 1"
            else:
                fix = "set fm.noise_scale to uniform (temperatures in [0, 1])"
            raise ValueError(
                f"fm.temperature_default is {temperature:g}, a noise scale that training "
                f"never shows the network (it shows {trained_scales}); {fix}, or set "
                "fm.temperature_default to a scale it shows"
            )
        return self

    def temperatures_trained(self) -> dict[str, list[float]]:
        """Return the initial noise scales that training shows the network (for metadata)."""
        if self.fm.noise_scale == "uniform":
            return {"range": [0.0, 1.0]}
        values = [1.0] if self.fm.zero_noise_prob < 1 else []
        if self.fm.zero_noise_prob > 0:
            values.insert(0, 0.0)
        return {"values": values}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"]["channel_mult"] = list(self.model.channel_mult)
        return out


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "fm": FlowConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown sections and keys."""
    raw = dict(raw or {})
    kwargs: dict[str, Any] = {}
    run_dir = raw.pop("run_dir", None)
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise ValueError(
                f"unknown config section {section!r}; known: {sorted(_SECTIONS)} and run_dir"
            )
        cls = _SECTIONS[section]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values or {}) - known
        if unknown:
            raise ValueError(
                f"unknown keys in config section {section!r}: {sorted(unknown)}; "
                f"known: {sorted(known)}"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        typed = {
            key: _coerce(f"{section}.{key}", fields[key].type, value)
            for key, value in (values or {}).items()
        }
        kwargs[section] = cls(**typed)
    config = Config(**kwargs)
    if run_dir is not None:
        config.run_dir = str(run_dir)
    return config.validate()


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the key.

    YAML reads `5e-4` as a string (its floats need a dot), so numbers are parsed here.
    """
    annotation = str(annotation)
    if value is None and "None" in annotation:
        return None
    base = annotation.replace(" | None", "")
    try:
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation.startswith("str"):
            # YAML 1.1 reads off/on/no/yes as booleans; the string fields mean the words.
            if isinstance(value, bool):
                return "on" if value else "off"
            return value if value is None else str(value)
        if base == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {value!r}; expected a value of type {annotation}") from None
    return value


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML) to nested dicts."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form section.key=value")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {assignment!r}: {key!r} is not a config section")
    node[keys[-1]] = yaml.safe_load(value)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path} must contain a mapping of sections")
    for assignment in overrides:
        apply_override(raw, assignment)
    return from_dict(raw).check_default_temperature()
