"""TensorRT engines: profile sizing, inspector checks, metadata and stale-engine rejection.

The CPU tests cover the logic that decides. The engine build and run at the end need
TensorRT, cuda-python and a CUDA GPU, and skip without them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fmsr_export import trt_build
from fmsr_export.trt_build import GIB, MIB, MemoryBudget, Profile
from fmsr_infer import backend_trt
from fmsr_infer.backend_trt import EngineMetadata, EngineMismatchError
from fmsr_infer.gpu_loop import LOOP_BYTES_PER_PIXEL
from fmsr_infer.model_info import ModelError

# The fp16 UNetSR of the default config keeps about 256 bytes live per pixel (the ONNX
# estimate of trt_build.activation_bytes_per_pixel); the tests use that figure.
DEFAULT_MODEL_BYTES_PER_PIXEL = 256.0
DEFAULT_BUDGET = MemoryBudget.from_gib(
    trt_build.DEFAULT_GPU_MEM_GIB, trt_build.DEFAULT_RESERVE_GIB, trt_build.DEFAULT_WORKSPACE_MIB
)


# ---------------------------------------------------------------------------------
# Profile sizing


def test_default_budget_is_4gb_card():
    assert DEFAULT_BUDGET.gpu_memory_bytes == 4 * GIB
    assert DEFAULT_BUDGET.usable_bytes == 4 * GIB - GIB - 512 * MIB


def test_plan_profile_default_budget():
    profile = trt_build.plan_profile(DEFAULT_BUDGET, DEFAULT_MODEL_BYTES_PER_PIXEL, 4 * MIB, 4)
    assert profile.max == (trt_build.MAX_BATCH, trt_build.MAX_TILE, trt_build.MAX_TILE)
    assert profile.opt == profile.max
    assert profile.min == (1, 4, 4)


def test_plan_profile_fits_budget():
    """Every planned profile leaves its estimated use inside the usable budget."""
    for gib in (0.75, 1.0, 1.5, 2.0, 4.0, 8.0):
        budget = MemoryBudget.from_gib(gib, 0.25, 128)
        profile = trt_build.plan_profile(budget, DEFAULT_MODEL_BYTES_PER_PIXEL, 4 * MIB, 4)
        batch, height, width = profile.max
        per_pixel = trt_build.tile_bytes_per_pixel(DEFAULT_MODEL_BYTES_PER_PIXEL)
        assert 4 * MIB + batch * height * width * per_pixel <= budget.usable_bytes, gib
        assert height == width
        assert height % trt_build.TILE_STEP == 0


def test_plan_profile_shrinks_tile_then_batch():
    small = MemoryBudget(
        gpu_memory_bytes=300 * MIB, reserve_bytes=100 * MIB, workspace_bytes=64 * MIB
    )
    profile = trt_build.plan_profile(small, DEFAULT_MODEL_BYTES_PER_PIXEL, 4 * MIB, 4)
    batch, tile, _ = profile.max
    assert tile < trt_build.MAX_TILE
    assert batch >= 1
    larger = trt_build.plan_profile(DEFAULT_BUDGET, DEFAULT_MODEL_BYTES_PER_PIXEL, 4 * MIB, 4)
    assert larger.max[1] >= tile


def test_plan_profile_respects_size_multiple():
    profile = trt_build.plan_profile(DEFAULT_BUDGET, 300.0, 4 * MIB, 48, max_tile=500)
    assert profile.max[1] % 48 == 0
    assert profile.max[1] % trt_build.TILE_STEP == 0
    assert profile.min == (1, 48, 48)


def test_plan_profile_budget_too_small():
    tiny = MemoryBudget(gpu_memory_bytes=40 * MIB, reserve_bytes=20 * MIB, workspace_bytes=16 * MIB)
    with pytest.raises(ValueError, match="raise --gpu-mem"):
        trt_build.plan_profile(tiny, DEFAULT_MODEL_BYTES_PER_PIXEL, 4 * MIB, 4)


def test_budget_without_room_rejected():
    with pytest.raises(ValueError, match="leaves nothing"):
        MemoryBudget.from_gib(1.0, 1.0, 16)


def test_shrink_profile_sequence():
    profile = Profile(min=(1, 4, 4), opt=(4, 256, 256), max=(4, 256, 256))
    seen = []
    while profile is not None:
        seen.append(profile.max)
        profile = trt_build.shrink_profile(profile, 4)
    assert seen[:3] == [(4, 256, 256), (2, 256, 256), (1, 256, 256)]
    assert seen[3] == (1, 192, 192)
    assert seen[-1] == (1, trt_build.MIN_TILE, trt_build.MIN_TILE)


def test_budget_capped_to_4gb_card():
    """A 4 GB card reports slightly under 4 GiB; the default budget must still build."""
    reported = 4_294_639_616  # bytes that a 4 GB card can report, under 4 GiB
    capped = trt_build.fit_budget_to_gpu(DEFAULT_BUDGET, reported, "RTX 2050")
    assert capped.gpu_memory_bytes == reported
    assert capped.reserve_bytes == DEFAULT_BUDGET.reserve_bytes
    assert trt_build.fit_budget_to_gpu(DEFAULT_BUDGET, 8 * GIB, "big") is DEFAULT_BUDGET
    with pytest.raises(ValueError, match="exceeds the 2.00 GiB of small"):
        trt_build.fit_budget_to_gpu(DEFAULT_BUDGET, 2 * GIB, "small")


def test_required_bytes_adds_loop_buffers():
    profile = Profile(min=(1, 4, 4), opt=(2, 128, 128), max=(2, 128, 128))
    needed = trt_build.required_bytes(DEFAULT_BUDGET, 100 * MIB, 5 * MIB, profile)
    loop = LOOP_BYTES_PER_PIXEL * 2 * 128 * 128
    assert needed == DEFAULT_BUDGET.reserve_bytes + 100 * MIB + 5 * MIB + loop


def test_activation_estimate_per_pixel(tiny_onnx, tmp_path):
    """The ONNX estimate is per pixel: the same at two sizes, and fp16 halves it."""
    import onnx

    pytest.importorskip(
        "onnxconverter_common", reason="onnxconverter-common (fmsr[gpu]) is not installed"
    )
    from fmsr_export import fp16

    model = onnx.load(str(tiny_onnx))
    at_64 = trt_build.activation_bytes_per_pixel(model, 64)
    at_128 = trt_build.activation_bytes_per_pixel(model, 128)
    assert at_64 > 0
    assert at_128 == pytest.approx(at_64, rel=0.02)
    half, _ = fp16.convert_to_fp16(model)
    assert trt_build.activation_bytes_per_pixel(half, 64) == pytest.approx(at_64 / 2, rel=0.05)


# ---------------------------------------------------------------------------------
# Engine inspector


def _layer(name, layer_type, output_format, parameter_type=""):
    layer = {
        "Name": name,
        "LayerType": layer_type,
        "Inputs": [{"Name": "in", "Format/Datatype": output_format}],
        "Outputs": [{"Name": "out", "Format/Datatype": output_format}],
    }
    if parameter_type:
        layer["ParameterType"] = parameter_type
    return layer


def test_inspector_summary_fp16_engine():
    info = {
        "Layers": [
            _layer(
                "conv_in",
                "CaskConvolution",
                "Channel major FP16 format where channel % 8 == 0",
                "Convolution",
            ),
            _layer("time_mlp", "MatrixMultiply", "Row major linear FP32"),
            _layer("cast", "Reformat", "Half"),
        ]
    }
    summary = trt_build.summarize_layer_precisions(json.dumps(info))
    assert summary["fp16"] == 2
    assert summary["fp32"] == 1
    assert summary["fp32_convolutions"] == []
    trt_build.check_fp16_engine(summary)


def test_inspector_rejects_fp32_convolution():
    info = {
        "Layers": [
            _layer("conv_in", "CaskConvolution", "Row major linear FP32", "Convolution"),
            _layer("conv_1", "CaskConvolution", "Half", "Convolution"),
        ]
    }
    summary = trt_build.summarize_layer_precisions(json.dumps(info))
    assert summary["fp32_convolutions"] == ["conv_in"]
    with pytest.raises(trt_build.EngineBuildError, match="convolutions in fp32"):
        trt_build.check_fp16_engine(summary)


def test_inspector_rejects_all_fp32():
    info = {"Layers": [_layer("gemm", "MatrixMultiply", "Float")]}
    summary = trt_build.summarize_layer_precisions(json.dumps(info))
    with pytest.raises(trt_build.EngineBuildError, match="no fp16 layer"):
        trt_build.check_fp16_engine(summary)


def test_inspector_names_only_rejected():
    with pytest.raises(trt_build.EngineBuildError, match="DETAILED"):
        trt_build.summarize_layer_precisions(json.dumps({"Layers": ["conv_in", "conv_1"]}))


def test_parser_errors_name_nodes():
    """Parser errors name the ONNX node; fakes stand in for TensorRT's error objects."""
    import onnx
    from onnx import helper

    class FakeError:
        def __init__(self, node, desc):
            self._node, self._desc = node, desc

        def node(self):
            return self._node

        def desc(self):
            return self._desc

        def code(self):
            return "UNSUPPORTED_NODE"

    class FakeParser:
        errors = (FakeError(1, "Antialiasing is not supported"), FakeError(-1, "bad graph"))
        num_errors = 2

        def get_error(self, index):
            return self.errors[index]

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["a"], ["b"], name="relu0"),
            helper.make_node("Resize", ["b"], ["c"], name="upsample_cond"),
        ],
        "g",
        [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1])],
    )
    text = trt_build.format_parser_errors(FakeParser(), graph)
    assert "node 'upsample_cond' (Resize): Antialiasing is not supported" in text
    assert "the graph: bad graph" in text


# ---------------------------------------------------------------------------------
# Engine metadata and stale engines


def _metadata(**changes) -> EngineMetadata:
    meta = EngineMetadata(
        format=backend_trt.ENGINE_FORMAT,
        tensorrt_version="11.4.0.106",
        gpu_name="NVIDIA GeForce RTX 2050",
        compute_capability="8.6",
        precision="fp16",
        profile={"min": [1, 4, 4], "opt": [8, 512, 512], "max": [8, 512, 512]},
        onnx_file="step_10_fp16.onnx",
        onnx_sha256="a" * 64,
        source_onnx_sha256="b" * 64,
        device_memory_bytes=600 * MIB,
        engine_bytes=4 * MIB,
        workspace_bytes=512 * MIB,
        builder_optimization_level=3,
        gpu_memory_budget_bytes=4 * GIB,
        reserve_bytes=GIB,
        layer_precisions={"fp16": 40, "fp32": 12, "other": 0},
        training_step=10,
    )
    return replace(meta, **changes)


def _check(meta, **actual):
    facts = {
        "tensorrt_version": "11.4.0.106",
        "gpu_name": "NVIDIA GeForce RTX 2050",
        "compute_capability": "8.6",
        "model_sha256": "b" * 64,
    }
    facts.update(actual)
    backend_trt.check_engine_metadata(meta, Path("m/step_10_fp16.engine"), **facts)


def test_engine_paths():
    assert backend_trt.engine_path_for("m/x.onnx") == Path("m/x_fp16.engine")
    assert backend_trt.engine_path_for("m/x_fp16.onnx") == Path("m/x_fp16.engine")
    assert backend_trt.engine_path_for("m/x_fp16.engine") == Path("m/x_fp16.engine")
    assert backend_trt.engine_metadata_path("m/x_fp16.engine") == Path("m/x_fp16.engine.json")


def test_metadata_round_trip(tmp_path):
    engine = tmp_path / "step_10_fp16.engine"
    engine.write_bytes(b"plan")
    meta = _metadata()
    backend_trt.engine_metadata_path(engine).write_text(json.dumps(meta.to_dict()))
    loaded = backend_trt.load_engine_metadata(engine)
    assert loaded == meta
    assert loaded.max_shape == (8, 512, 512)


def test_matching_engine_accepted():
    _check(_metadata())
    _check(_metadata(), model_sha256="a" * 64)  # the fp16 model itself


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        (
            {"tensorrt_version": "11.5.0.1"},
            "TensorRT 11.4.0.106, but TensorRT 11.5.0.1 is installed",
        ),
        ({"gpu_name": "NVIDIA H200"}, "this GPU is NVIDIA H200"),
        ({"compute_capability": "9.0"}, "compute capability 9.0"),
        ({"model_sha256": "c" * 64}, "the model given has sha256 cccccccccccc"),
    ],
)
def test_stale_engine_rejected(actual, expected):
    with pytest.raises(EngineMismatchError) as raised:
        _check(_metadata(), **actual)
    message = str(raised.value)
    assert expected in message
    assert "Rebuild it on this machine" in message


def test_stale_engine_rebuild_commands():
    with pytest.raises(EngineMismatchError) as raised:
        _check(_metadata(), tensorrt_version="12.0.0")
    assert "python -m fmsr_export.trt_build m/step_10_fp16.onnx" in str(raised.value)
    with pytest.raises(EngineMismatchError) as raised:
        _check(_metadata(), model_sha256="c" * 64)
    # A changed model needs a new fp16 ONNX from its checkpoint, not only a new engine.
    assert "fmsr-export --ckpt CHECKPOINT --out m/step_10.onnx --fp16" in str(raised.value)
    assert "trt_build" not in str(raised.value)


def test_fp32_engine_rejected():
    with pytest.raises(EngineMismatchError, match="fp16 engines only"):
        _check(_metadata(precision="fp32"))


def test_engine_metadata_missing_or_invalid(tmp_path):
    engine = tmp_path / "x_fp16.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ModelError, match="not found beside"):
        backend_trt.load_engine_metadata(engine)
    meta_path = backend_trt.engine_metadata_path(engine)
    meta_path.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        backend_trt.load_engine_metadata(engine)
    meta_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelError, match="format 'something-else'"):
        backend_trt.load_engine_metadata(engine)
    partial = _metadata().to_dict()
    del partial["onnx_sha256"]
    meta_path.write_text(json.dumps(partial))
    with pytest.raises(ModelError, match="lacks"):
        backend_trt.load_engine_metadata(engine)


def test_trt_build_cli_without_tensorrt(tmp_path, monkeypatch):
    """Without TensorRT the build command fails with what to install."""
    import sys

    from click.testing import CliRunner

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = tmp_path / "m_fp16.onnx"
    model.write_bytes(b"onnx")
    model.with_suffix(".json").write_text(json.dumps({"precision": "fp16", "size_multiple": 4}))
    result = CliRunner().invoke(trt_build.main, [str(model)])
    assert result.exit_code == 1
    assert "TensorRT is not installed" in result.output
    assert "pip install 'fmsr[gpu]'" in result.output


def test_trt_build_rejects_fp32_model(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    model.with_suffix(".json").write_text(json.dumps({"precision": "fp32"}))
    with pytest.raises(trt_build.EngineBuildError, match="build from the fp16 ONNX"):
        trt_build.build_engine(model)


# ---------------------------------------------------------------------------------
# On a GPU with TensorRT


def _gpu_with_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'fmsr[gpu]')"
    from fmsr_infer.gpu_loop import GpuUnavailable, gpu_facts

    try:
        gpu_facts()
    except GpuUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def tiny_engine(tiny_onnx, tmp_path_factory):
    reason = _gpu_with_tensorrt()
    if reason:
        pytest.skip(reason)
    pytest.importorskip(
        "onnxconverter_common", reason="onnxconverter-common (fmsr[gpu]) is not installed"
    )
    from fmsr_export import fp16
    from fmsr_infer.model_info import load_info

    folder = tmp_path_factory.mktemp("engine")
    images = fp16.load_check_images(None, crop=32)
    fp16_path, _, _ = fp16.export_fp16(
        tiny_onnx, load_info(tiny_onnx), images, out_path=folder / "tiny_fp16.onnx"
    )
    budget = MemoryBudget.from_gib(1.0, 0.25, 64)
    engine, meta = trt_build.build_engine(fp16_path, budget=budget, max_tile=128, max_batch=2)
    return fp16_path, engine, meta


def test_engine_build_is_fp16(tiny_engine):
    _, engine, meta = tiny_engine
    assert engine.is_file()
    assert meta.precision == "fp16"
    assert meta.layer_precisions["fp16"] > 0
    assert (engine.parent / trt_build.TIMING_CACHE_NAME).is_file()


def test_engine_matches_cpu(tiny_engine, tiny_onnx):
    from fmsr_infer.backend_ort import OrtBackend
    from fmsr_infer.model_info import load_info

    fp16_path, _, _ = tiny_engine
    info = load_info(fp16_path)
    trt_backend = backend_trt.TrtBackend(fp16_path, info)
    cpu = OrtBackend(tiny_onnx, load_info(tiny_onnx))
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((2, 3, 64, 96)).astype(np.float32)
    cond = rng.uniform(-1, 1, (2, 3, 64, 96)).astype(np.float32)
    t = np.array([0.25, 0.75], np.float32)
    error = np.max(np.abs(trt_backend(x_t, cond, t) - cpu(x_t, cond, t)))
    assert error < 2e-2
