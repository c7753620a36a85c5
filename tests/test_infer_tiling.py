"""Tiled sampling: tile plans, region upsample, blend, seams and memory (fmsr_infer.tiling)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import photo_arrays, run_cli
from fmsr_infer import flow
from fmsr_infer.metrics import psnr
from fmsr_infer.model_info import INPUT_NAMES, METADATA_FORMAT, ModelInfo
from fmsr_infer.pipeline import SampleSettings, Upscaler
from fmsr_infer.resize import upsample
from fmsr_infer.tiling import (
    BlendBuffer,
    RegionUpsampler,
    Tile,
    TileSettings,
    axis_starts,
    feather,
    plan_tiles,
    sample_tiled,
    tile_for_budget,
)


def make_info(size_multiple: int = 8, **overrides) -> ModelInfo:
    fields = dict(
        format=METADATA_FORMAT, scale=4, size_multiple=size_multiple, value_range=[-1.0, 1.0],
        input_names=list(INPUT_NAMES), output_name="x1", target="residual", prediction="x1",
        residual_scale=4.0, t_floor=0.05, sampler_default="euler", steps_default=2,
        temperature_default=1.0, precision="fp32", training_step=0, checkpoint_sha256="",
        onnx_sha256="", parity_max_abs_error=0.0,
    )
    fields.update(overrides)
    return ModelInfo(**fields)


def pointwise_backend(x_t, cond, t):
    """A network without spatial context: tiling must not change its result at all."""
    return np.tanh(0.5 * cond + 0.3 * x_t) + 0.1 * t[:, None, None, None]


@pytest.mark.parametrize(
    "length, tile, overlap",
    [(100, 32, 8), (33, 32, 8), (32, 32, 8), (20, 32, 8), (1000, 128, 0), (97, 40, 20)],
)
def test_axis_starts_cover_length(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    span = min(length, tile)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        assert 0 <= start <= length - span
        covered[start : start + span] = True
    assert covered.all()
    assert starts[-1] + span == length
    for left, right in zip(starts[:-1], starts[1:]):
        assert left + span - right >= overlap


def test_plan_tiles_row_major_and_inside():
    tiles = plan_tiles(100, 70, TileSettings(tile=32, overlap=8), multiple=8)
    assert [t.row0 for t in tiles] == sorted(t.row0 for t in tiles)
    for tile in tiles:
        assert tile.row0 + tile.height <= 100
        assert tile.col0 + tile.width <= 70


def test_plan_tiles_rejects_bad_tile():
    with pytest.raises(ValueError, match="multiple"):
        plan_tiles(100, 100, TileSettings(tile=30, overlap=4), multiple=8)
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, TileSettings(tile=32, overlap=20), multiple=8)


def test_feather_positive_ramps():
    weight = feather(32, leading=True, trailing=True, ramp=8)
    assert np.all(weight > 0)
    assert np.all(weight[8:24] == 1)
    np.testing.assert_allclose(weight[:8], weight[::-1][:8])
    assert np.all(np.diff(weight[:8]) > 0)
    assert np.all(feather(32, leading=False, trailing=False, ramp=8) == 1)


def test_tile_for_budget_multiple_and_batch():
    info = make_info(size_multiple=8, model_config={"base_channels": 32, "channel_mult": [1, 2, 4]})
    single = tile_for_budget(info, 1024, batch=1)
    quadruple = tile_for_budget(info, 1024, batch=4)
    assert single % 8 == 0
    assert quadruple % 8 == 0
    assert quadruple < single
    assert tile_for_budget(info, 16, batch=64) == 64  # the smallest automatic tile


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 5, 1), (37, 53, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_region_upsample_equals_whole_crop(shape, dtype):
    rng = np.random.default_rng(0)
    max_value = np.iinfo(dtype).max
    lr = rng.integers(0, max_value + 1, size=shape).astype(dtype)
    whole = upsample(lr.astype(np.float64) / max_value)
    if whole.ndim == 2:
        whole = whole[..., None]
    upsampler = RegionUpsampler(lr, max_value, 4)
    height, width = shape[0] * 4, shape[1] * 4
    for row0, row1, col0, col1 in [(0, height, 0, width), (1, height - 1, 2, width)]:
        if row1 <= row0 or col1 <= col0:
            continue
        region = upsampler.region(row0, row1, col0, col1)
        np.testing.assert_allclose(region, whole[row0:row1, col0:col1], atol=1e-6)
        condition = upsampler.condition(row0, row1, col0, col1)
        np.testing.assert_allclose(
            condition, flow.to_network(region).transpose(2, 0, 1), atol=1e-5
        )


def test_blend_of_constant_tiles_is_constant():
    buffer = BlendBuffer(3, 50)
    rng = np.random.default_rng(1)
    for tile in plan_tiles(40, 50, TileSettings(tile=16, overlap=8), multiple=8):
        values = np.full((3, tile.height, tile.width), 0.25, np.float32)
        weight = rng.uniform(0.1, 1.0, size=(tile.height, tile.width)).astype(np.float32)
        buffer.add(tile, values, weight)
    first, rows = buffer.release(40)
    assert first == 0
    assert rows.shape == (3, 40, 50)
    np.testing.assert_allclose(rows, 0.25, rtol=1e-6)


def test_blend_rejects_released_rows():
    buffer = BlendBuffer(3, 8)
    buffer.add(Tile(0, 0, 8, 8), np.zeros((3, 8, 8), np.float32), np.ones((8, 8), np.float32))
    buffer.release(4)
    with pytest.raises(ValueError, match="above released row"):
        buffer.add(Tile(0, 0, 8, 8), np.zeros((3, 8, 8), np.float32), np.ones((8, 8), np.float32))


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize(
    "lr_shape, tile, overlap, batch",
    [((13, 23), 32, 8, 3), ((5, 40), 32, 16, 2), ((30, 30), 64, 0, 1), ((2, 2), 8, 0, 4)],
)
def test_tiled_equals_untiled_without_context(sampler, lr_shape, tile, overlap, batch):
    rng = np.random.default_rng(2)
    lr = rng.uniform(size=(*lr_shape, 3)).astype(np.float32)
    upscaler = Upscaler(pointwise_backend, make_info())
    settings = SampleSettings(steps=2, sampler=sampler, seed=11, temperature=1.0)
    whole = upscaler.upscale(lr, settings)
    tiled = upscaler.upscale(lr, settings, TileSettings(tile, overlap, batch))
    assert tiled.image.shape == (lr_shape[0] * 4, lr_shape[1] * 4, 3)
    np.testing.assert_allclose(tiled.image, whole.image, atol=2e-6)


def test_sample_tiled_emits_each_row_once():
    rng = np.random.default_rng(3)
    lr = rng.uniform(size=(25, 9, 3)).astype(np.float32)
    upscaler = Upscaler(pointwise_backend, make_info())
    settings = SampleSettings(steps=1, temperature=1.0)
    emitted = []
    sample_tiled(
        lambda cond, noise: upscaler.sample(cond, noise, settings),
        RegionUpsampler(lr, 1.0, 4), 100, 36, seed=0, draw_noise=True,
        settings=TileSettings(tile=24, overlap=8, batch=2), multiple=8,
        emit=lambda row0, rows: emitted.append((row0, rows.shape[1])),
    )
    assert len(emitted) > 1
    row = 0
    for row0, count in emitted:
        assert row0 == row
        row += count
    assert row == 100


@pytest.fixture(scope="module")
def context_onnx(tiny_run, tiny_onnx, tmp_path_factory):
    """The tiny network with a random output layer, so its output depends on context.

    The trained tiny model is barely past its zero-initialised output layer, so its
    output is the bicubic upsample almost everywhere and would hide tile seams.
    """
    import torch

    from fmsr_export.export import export_onnx, load_ema_model

    model, _ = load_ema_model(tiny_run / "checkpoints" / "step_12.pt")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = model.conv_out.weight
        weight.copy_(0.05 * torch.randn(weight.shape, generator=generator))
    path = tmp_path_factory.mktemp("context_model") / "context.onnx"
    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    export_onnx(model, path, meta["output_name"])
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_tiled_cli_matches_untiled_45db(context_onnx, tmp_path):
    lr = photo_arrays()["astronaut"][::4, ::4][:70, :90]  # 70 x 90 -> 280 x 360 output
    Image.fromarray(lr).save(tmp_path / "photo.png")
    outputs = {}
    for name, tile in (("whole", "0"), ("tiled", "96")):
        run_cli(
            "fmsr-infer", str(tmp_path / "photo.png"), "--model", str(context_onnx),
            "-o", str(tmp_path / name), "--steps", "2", "--temperature", "1", "--seed", "4",
            "--tile", tile, "--tile-overlap", "32", "--batch", "2", "-q",
        )
        with Image.open(tmp_path / name / "photo_x4_s2.png") as img:
            outputs[name] = np.asarray(img)
    assert not np.array_equal(outputs["whole"], outputs["tiled"]), "the network sees context"
    score = psnr(outputs["tiled"], outputs["whole"], crop_border=0, y_channel=False)
    assert score >= 45.0, f"tiled vs untiled PSNR {score:.2f} dB"


def peak_rss_mib(*args: str) -> float:
    """Run a command in a fresh parent and return the command's peak RSS in MiB."""
    probe = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(proc.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(proc.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux")
def test_tiled_memory_bounded_by_tile(tiny_onnx, tmp_path):
    photo = photo_arrays()["coffee"]  # 400 x 600
    Image.fromarray(photo[:60, :80]).save(tmp_path / "small.png")
    Image.fromarray(photo[:300, :400]).save(tmp_path / "large.png")  # 1200 x 1600 output
    peaks = {}
    for name in ("small", "large"):
        peaks[name] = peak_rss_mib(
            shutil.which("fmsr-infer"), str(tmp_path / f"{name}.png"), "--model",
            str(tiny_onnx), "-o", str(tmp_path / "out"), "--steps", "1", "--tile", "128", "-q",
        )
    # Untiled, the large output needs about 1.9 million pixels x 600 bytes = 1.1 GB more.
    assert peaks["large"] - peaks["small"] < 80, peaks
    with Image.open(tmp_path / "out" / "large_x4_s1.png") as img:
        assert img.size == (1600, 1200)



class ProfileBackend:
    """A stand-in for a backend with a fixed input profile, as TensorRT engines have."""

    max_shape = (2, 256, 192)


@pytest.mark.parametrize(
    "requested, expected",
    [
        (TileSettings(tile=0, overlap=32, batch=4), TileSettings(tile=192, overlap=32, batch=2)),
        (TileSettings(tile=512, overlap=32, batch=1), TileSettings(tile=192, overlap=32, batch=1)),
        (TileSettings(tile=128, overlap=16, batch=8), TileSettings(tile=128, overlap=16, batch=2)),
    ],
)
def test_fit_to_backend_profile(requested, expected):
    from fmsr_infer.tiling import fit_to_backend

    assert fit_to_backend(requested, ProfileBackend(), multiple=8) == expected
    assert fit_to_backend(requested, pointwise_backend, multiple=8) == requested
