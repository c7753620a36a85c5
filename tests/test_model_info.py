"""The model metadata: loading older files, and rejecting invalid sampler fields."""

import json
import shutil

import pytest

from conftest import REPO
from fmsr_infer.model_info import ModelError, load_info

BUNDLED = REPO / "fmsr_infer" / "models" / "default.onnx"


def copy_with_metadata(tmp_path, **changes):
    """Copy the bundled model with its metadata changed; None deletes a field."""
    model = tmp_path / "m.onnx"
    shutil.copy(BUNDLED, model)
    raw = json.loads(BUNDLED.with_suffix(".json").read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    model.with_suffix(".json").write_text(json.dumps(raw))
    return model


def test_bundled_model_recommends_midpoint():
    info = load_info(BUNDLED)
    assert (info.sampler_default, info.steps_default, info.grid_default) == ("midpoint", 3, "uniform")
    assert info.temperature_default == 0.0
    assert info.temperatures_trained == {"values": [0.0, 1.0]}
    assert info.temperature_trained(0.0)
    assert info.temperature_trained(1.0)
    assert info.temperature_trained(0.5) is False


def test_older_metadata_loads_defaults(tmp_path):
    model = copy_with_metadata(
        tmp_path, grid_default=None, shift_default=None, temperatures_trained=None
    )
    info = load_info(model)
    assert info.grid_default == "uniform"
    assert info.shift_default is None
    # Unknown training temperatures: nothing to warn about.
    assert info.temperature_trained(0.5) is None


def test_range_of_trained_temperatures(tmp_path):
    info = load_info(copy_with_metadata(tmp_path, temperatures_trained={"range": [0.0, 1.0]}))
    assert info.temperature_trained(0.5)
    assert info.temperature_trained(1.5) is False
    assert info.describe_trained_temperatures() == "every noise scale from 0 to 1"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sampler_default": "ddim"}, "unknown sampler_default 'ddim'"),
        ({"grid_default": "cosine"}, "unknown grid_default 'cosine'"),
        ({"steps_default": 0}, "steps_default is 0"),
        ({"shift_default": 2.0}, "shift_default is set but grid_default is 'uniform'"),
        ({"temperatures_trained": {"min": 0}}, "temperatures_trained is"),
        ({"target": "noise"}, "unknown target 'noise'"),
        ({"grid_default": "shifted", "shift_default": -1.0}, "shift_default -1.0"),
        ({"temperature_default": 5.0}, "temperature_default is 5.0, not a number in"),
        ({"temperatures_trained": {"range": [1.0, 0.0]}}, "temperatures_trained is"),
    ],
)
def test_invalid_sampler_fields(tmp_path, changes, message):
    with pytest.raises(ModelError, match=message):
        load_info(copy_with_metadata(tmp_path, **changes))


def test_missing_required_field_rejected(tmp_path):
    with pytest.raises(ModelError, match=r"lacks \['steps_default'\]"):
        load_info(copy_with_metadata(tmp_path, steps_default=None))
