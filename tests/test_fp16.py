"""The fp16 ONNX export: what stays fp32, the check against fp32 on photos, the CLI."""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip(
    "onnxconverter_common", reason="onnxconverter-common (fmsr[gpu]) is not installed"
)

from fmsr_export import fp16
from fmsr_infer.model_info import load_info

FLOAT16 = onnx.TensorProto.FLOAT16
FLOAT = onnx.TensorProto.FLOAT


def _initializer_types(model) -> dict[str, int]:
    return {init.name: init.data_type for init in model.graph.initializer}


@pytest.fixture(scope="module")
def tiny_model(tiny_onnx):
    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="module")
def converted(tiny_model):
    return fp16.convert_to_fp16(tiny_model)


def test_time_path_covers_embedding(tiny_model):
    names = set(fp16.time_path_nodes(tiny_model.graph))
    by_name = {node.name: node for node in tiny_model.graph.node}
    op_types = {by_name[name].op_type for name in names}
    assert {"Cos", "Sin", "Gemm"} <= op_types
    assert "Conv" not in op_types
    # Every Gemm (time MLP and time-bias projections) is on the time path.
    gemms = {node.name for node in tiny_model.graph.node if node.op_type == "Gemm"}
    assert gemms <= names


def test_convert_keeps_io_float32(converted):
    model, _ = converted
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.elem_type == FLOAT, value.name


def test_convert_makes_convolutions_fp16(converted):
    model, _ = converted
    types = _initializer_types(model)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert convs
    for node in convs:
        assert types[node.input[1]] == FLOAT16, node.name


def test_convert_keeps_time_path_fp32(converted, tiny_model):
    model, report = converted
    time_nodes = set(fp16.time_path_nodes(tiny_model.graph))
    assert time_nodes <= set(report.kept_fp32_nodes)
    types = _initializer_types(model)
    by_output = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.name not in time_nodes:
            continue
        for name in node.input:
            if name in types:
                assert types[name] != FLOAT16, f"{node.name} reads the fp16 weight {name}"
            producer = by_output.get(name)
            if producer is not None:
                assert producer.op_type != "Cast", f"{node.name} reads a Cast: {producer.name}"
    fp16.check_fp32_region(model, sorted(time_nodes))


def test_raw_converter_fails_region_check(tiny_model):
    """The plain converter rounds the time path to fp16, which the check must catch."""
    from onnxconverter_common import float16

    model = onnx.ModelProto()
    model.CopyFrom(tiny_model)
    time_nodes = fp16.time_path_nodes(model.graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            node_block_list=time_nodes,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + ["Sin", "Cos"],
        )
    with pytest.raises(fp16.Fp16Error, match="rounds values of the fp32 region"):
        fp16.check_fp32_region(raw, time_nodes)


def test_name_unnamed_nodes_unique():
    from onnx import helper

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Relu", ["b"], ["c"], name="Relu_1"),
            helper.make_node("Relu", ["c"], ["d"]),
        ],
        "g",
        [helper.make_tensor_value_info("a", FLOAT, [1])],
        [helper.make_tensor_value_info("d", FLOAT, [1])],
    )
    assert fp16.name_unnamed_nodes(graph) == 2
    names = [node.name for node in graph.node]
    assert len(set(names)) == 3
    assert all(names)


def test_psnr_db_values():
    a = np.zeros((4, 4, 3), np.float32)
    assert fp16.psnr_db(a, a) == math.inf
    b = a + 0.01
    assert fp16.psnr_db(a, b) == pytest.approx(40.0, abs=1e-3)


def test_export_fp16_accuracy(tiny_onnx, tmp_path):
    """The check on real photos: the model's recommended sampler, fp16 within 45 dB of fp32."""
    info = load_info(tiny_onnx)
    images = fp16.load_check_images(None, crop=32)
    out = tmp_path / "tiny_fp16.onnx"
    path, _, accuracy = fp16.export_fp16(tiny_onnx, info, images, out_path=out)

    assert path == out
    assert path.is_file()
    # The tiny model recommends midpoint with 3 steps (config.yaml): 6 calls per photo.
    assert (accuracy.sampler, accuracy.steps) == (info.sampler_default, info.steps_default)
    assert (accuracy.sampler, accuracy.steps) == ("midpoint", 3)
    assert accuracy.network_calls == 6 * len(images)
    assert set(accuracy.psnr_db) == set(images)
    assert accuracy.min_psnr_db >= 45.0
    assert 0.0 <= accuracy.max_abs_error < 1e-2

    written = json.loads(path.with_suffix(".json").read_text())
    assert written["precision"] == "fp16"
    assert written["onnx_sha256"] == fp16.sha256_file(path)
    assert written["source_onnx_sha256"] == fp16.sha256_file(tiny_onnx)
    assert written["fp16_check"]["steps"] == 3
    assert written["parity_max_abs_error"] == accuracy.max_abs_error
    assert load_info(path).precision == "fp16"


def test_export_fp16_rejects_low_psnr(tiny_onnx, tmp_path):
    info = load_info(tiny_onnx)
    images = dict(list(fp16.load_check_images(None, crop=16).items())[:1])
    out = tmp_path / "rejected_fp16.onnx"
    with pytest.raises(fp16.Fp16Error, match="PSNR"):
        fp16.export_fp16(tiny_onnx, info, images, out_path=out, min_psnr_db=math.inf)
    assert not out.exists()
    assert not out.with_suffix(".json").exists()


def test_load_check_images_missing_folder(tmp_path):
    with pytest.raises(fp16.Fp16Error, match="not found"):
        fp16.load_check_images(tmp_path / "absent")
    with pytest.raises(fp16.Fp16Error, match="no images"):
        fp16.load_check_images(tmp_path)


def test_cli_fp16_without_tensorrt(tiny_onnx, tmp_path, monkeypatch):
    """--fp16 writes and checks the fp16 ONNX, then fails naming what to install.

    The fp32 export step is replaced by a copy of the tiny model's export (the
    end-to-end tests run the real one), so this test covers the fp16 branch only.
    """
    from click.testing import CliRunner
    from PIL import Image

    from fmsr_export import cli, export
    from tests.conftest import photo_arrays

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "cli.onnx"
    out.write_bytes(tiny_onnx.read_bytes())
    out.with_suffix(".json").write_text(tiny_onnx.with_suffix(".json").read_text())
    monkeypatch.setattr(export, "export", lambda ckpt, out_path: (out, load_info(out)))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo_arrays()["coffee"][:32, :32]).save(photos / "coffee.png")

    result = CliRunner().invoke(
        cli.main,
        ["--ckpt", "unused.pt", "--out", str(out), "--fp16", "--check-images", str(photos)],
    )
    assert result.exit_code == 1, result.output
    assert (tmp_path / "cli_fp16.onnx").is_file()
    assert (tmp_path / "cli_fp16.json").is_file()
    assert "min PSNR" in result.output
    assert "pip install 'fmsr[gpu]'" in result.output
    assert f"python -m fmsr_export.trt_build {tmp_path / 'cli_fp16.onnx'}" in result.output
    assert not (tmp_path / "cli_fp16.engine").exists()


def test_cli_no_engine_needs_fp16():
    from click.testing import CliRunner

    from fmsr_export import cli

    result = CliRunner().invoke(cli.main, ["--ckpt", "unused.pt", "--no-engine"])
    assert result.exit_code == 2
    assert "--no-engine applies only with --fp16" in result.output


def test_module_cli_converts_onnx(tiny_onnx, tmp_path):
    """python -m fmsr_export.fp16 converts an fp32 export without its checkpoint."""
    from click.testing import CliRunner
    from PIL import Image

    from tests.conftest import photo_arrays

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo_arrays()["rocket"][:24, :24]).save(photos / "rocket.png")
    out = tmp_path / "module_fp16.onnx"
    result = CliRunner().invoke(
        fp16._command(), [str(tiny_onnx), "--out", str(out), "--check-images", str(photos)]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "min PSNR" in result.output
    assert load_info(out).precision == "fp16"
