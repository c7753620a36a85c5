"""Train, export and infer through the console scripts, on real photos."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_arrays, run_cli
from fmsr_export.export import load_ema_model
from fmsr_infer.backend_ort import OrtBackend
from fmsr_infer.model_info import load_info
from fmsr_infer.pipeline import SampleSettings, Upscaler
from fmsr_train.config import from_dict
from fmsr_train.evaluate import super_resolve


def test_train_writes_checkpoints_and_log(tiny_run):
    names = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert names == ["step_12.pt", "step_6.pt"]
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 12]
    assert all(r["effective_batch"] == 8 for r in train)
    assert (tiny_run / "config.yaml").is_file()


def test_export_writes_metadata(tiny_onnx, tiny_run):
    info = load_info(tiny_onnx)
    assert info.scale == 4
    assert info.size_multiple == 4
    assert info.training_step == 12
    assert info.parity_max_abs_error <= 1e-4
    ckpt = tiny_run / "checkpoints" / "step_12.pt"
    assert info.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info.onnx_sha256 == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    # The sampler recommendation and the trained noise scales of config.yaml.
    assert (info.sampler_default, info.steps_default, info.grid_default) == ("midpoint", 3, "uniform")
    assert info.shift_default is None
    assert info.temperatures_trained == {"values": [0.0, 1.0]}


def test_onnx_matches_pytorch_two_sizes(tiny_onnx, tiny_run):
    model, _ = load_ema_model(tiny_run / "checkpoints" / "step_12.pt")
    backend = OrtBackend(tiny_onnx, load_info(tiny_onnx))
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 16, 28), (3, 3, 44, 12)]:
        x_t = rng.normal(size=shape).astype(np.float32)
        cond = rng.uniform(-1, 1, size=shape).astype(np.float32)
        t = rng.uniform(size=shape[0]).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x_t), torch.from_numpy(cond), torch.from_numpy(t))
        np.testing.assert_allclose(backend(x_t, cond, t), expected.numpy(), atol=1e-4)


def test_export_fp16_without_tensorrt_is_clear(tiny_run, tmp_path):
    proc = run_cli(
        "fmsr-export", "--ckpt", str(tiny_run / "checkpoints" / "step_12.pt"),
        "--out", str(tmp_path / "m.onnx"), "--fp16", check=False,
    )
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert proc.returncode == 1
        assert "TensorRT is not installed" in proc.stderr
        assert "fmsr[gpu]" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not list(tmp_path.glob("*.engine"))
    else:
        pytest.skip("TensorRT is installed; the engine build is tested in test_trt.py")
    # The fp16 model is written and checked before the engine build is attempted.
    assert (tmp_path / "m_fp16.onnx").is_file()
    assert (tmp_path / "m_fp16.json").is_file()


def test_export_missing_checkpoint(tmp_path):
    proc = run_cli("fmsr-export", "--ckpt", str(tmp_path / "nope.pt"), check=False)
    assert proc.returncode == 1
    assert "checkpoint not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def infer_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lr")
    photos = photo_arrays()
    Image.fromarray(photos["astronaut"][::8, ::8]).save(folder / "astronaut.png")
    Image.fromarray(photos["coffee"][100:153, 200:237]).save(folder / "odd.png")  # 37x53
    Image.fromarray(photos["chelsea"][::6, ::6]).save(folder / "chelsea.jpg", quality=90)
    return folder


def test_infer_folder_outputs_4x(tiny_onnx, infer_inputs, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(
        "fmsr-infer", str(infer_inputs), "--model", str(tiny_onnx), "--steps", "2",
        "-o", str(out), "--temperature", "1",
    )
    assert "3 images in" in proc.stdout
    for src in infer_inputs.iterdir():
        with Image.open(src) as lr, Image.open(out / f"{src.stem}_x4_s2.png") as sr:
            assert sr.size == (lr.size[0] * 4, lr.size[1] * 4)
    with Image.open(out / "odd_x4_s2.png") as sr:
        assert sr.size == (148, 212)


def test_infer_same_seed_same_bytes(tiny_onnx, infer_inputs, tmp_path):
    outputs = []
    for run in ("a", "b", "c"):
        seed = "7" if run != "c" else "8"
        run_cli(
            "fmsr-infer", str(infer_inputs / "odd.png"), "--model", str(tiny_onnx),
            "--steps", "2", "--seed", seed, "--temperature", "1", "-o", str(tmp_path / run),
        )
        outputs.append((tmp_path / run / "odd_x4_s2.png").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


@pytest.mark.parametrize(
    "sampler, grid, shift",
    [("euler", "uniform", None), ("heun", "uniform", None), ("midpoint", "shifted", 2.0)],
)
def test_runtime_matches_pytorch_sampler(tiny_onnx, tiny_run, sampler, grid, shift):
    model, state = load_ema_model(tiny_run / "checkpoints" / "step_12.pt")
    fm = from_dict(state["config"]).fm
    lr = photo_arrays()["rocket"][::10, ::10][:30, :20].astype(np.float32) / 255.0
    upscaler = Upscaler(OrtBackend(tiny_onnx, load_info(tiny_onnx)), load_info(tiny_onnx))
    settings = SampleSettings(
        steps=3, sampler=sampler, seed=0, temperature=0.0, grid=grid, shift=shift
    )
    ours = upscaler.upscale(lr, settings)
    expected, _ = super_resolve(
        model, torch.from_numpy(lr).permute(2, 0, 1)[None], fm, 3, sampler, temperature=0.0,
        grid=grid, shift=shift,
    )
    np.testing.assert_allclose(ours.image, expected[0].permute(1, 2, 0).numpy(), atol=1e-3)
    assert ours.network_calls == (3 if sampler == "euler" else 6)


def test_infer_missing_model_is_clear(infer_inputs, tmp_path):
    proc = run_cli(
        "fmsr-infer", str(infer_inputs), "--model", str(tmp_path / "none.onnx"),
        "-o", str(tmp_path / "o"), check=False,
    )
    assert proc.returncode == 2
    assert "model not found" in proc.stderr
    assert "Traceback" not in proc.stderr
