"""fmsr-eval and its sweep: pairing, sharpness, frontier, true call counts, outputs."""

import csv
import math
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, photo_arrays, run_cli
from fmsr_infer.backend_ort import OrtBackend
from fmsr_infer.evaluation import (
    GridSpec,
    ImagePair,
    Summary,
    SweepSetting,
    high_frequency_energy,
    load_pair,
    pair_images,
    pareto_frontier,
    prepare_image,
    run_sweep,
    sharpness_ratio,
    super_resolve,
    sweep_settings,
)
from fmsr_infer.metrics import to_uint8
from fmsr_infer.model_info import load_info
from fmsr_infer.pipeline import SampleSettings, Upscaler
from fmsr_infer.resize import downsample
from fmsr_infer.samplers import SAMPLERS, network_calls


def fmsr_eval(*args: str, **kwargs) -> subprocess.CompletedProcess:
    # The console script exists once the package is installed with this pyproject.toml.
    # Until then the same entry point runs as a module.
    script = shutil.which("fmsr-eval")
    command = [script] if script else [sys.executable, "-m", "fmsr_infer.eval_cli"]
    return run_cli(*command, *args, **kwargs)


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    """Two HR crops (one not a multiple of 4) and their LR, named as Set5 names them."""
    root = tmp_path_factory.mktemp("pairs")
    hr_dir, lr_dir = root / "HR", root / "LR"
    hr_dir.mkdir()
    lr_dir.mkdir()
    photos = photo_arrays()
    crops = {
        "astronaut": photos["astronaut"][40:104, 180:236],
        "chelsea": photos["chelsea"][60:110, 120:170],
    }
    for stem, hr in crops.items():
        Image.fromarray(hr).save(hr_dir / f"{stem}.png")
        lr = to_uint8(downsample(hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4] / 255.0))
        name = f"{stem}x4.png" if stem == "astronaut" else f"{stem}.png"
        Image.fromarray(lr).save(lr_dir / name)
    return lr_dir, hr_dir


# ---------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def sweep_run(tiny_onnx, pair_dirs, tmp_path_factory):
    lr_dir, hr_dir = pair_dirs
    out = tmp_path_factory.mktemp("sweep")
    proc = fmsr_eval(
        str(lr_dir), "--hr", str(hr_dir), "--model", str(tiny_onnx), "-o", str(out),
        "--temperatures", "0,1", "--grids", "uniform,shifted:2,image_end",
        "--max-calls", "4", "--frontier-calls", "2", "--backend", "cpu", "--threads", "1",
    )
    return out, proc


def test_eval_cli_writes_outputs(sweep_run):
    out, proc = sweep_run
    assert sorted(p.name for p in out.iterdir()) == [
        "sweep.csv", "sweep.md", "sweep.png", "sweep_per_image.csv",
    ]
    assert "on 2 images" in proc.stdout
    with Image.open(out / "sweep.png") as plot:
        assert plot.width > 1000
        assert plot.height > 500


def test_eval_cli_table_rows(sweep_run):
    out, _ = sweep_run
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    expected = sweep_settings(
        list(SAMPLERS),
        [GridSpec("uniform"), GridSpec("shifted", 2.0), GridSpec("image_end")],
        [0.0, 1.0],
        4,
    )
    assert rows[0]["sampler"] == "bicubic"
    assert len(rows) == len(expected) + 1
    for row in rows[1:]:
        assert int(row["calls"]) == network_calls(row["sampler"], int(row["steps"]))
        assert int(row["calls"]) <= 4
        assert math.isfinite(float(row["psnr_y"]))
        assert 0 < float(row["hf_ratio"])
    assert {int(r["calls"]) for r in rows[1:]} == {1, 2, 3, 4}
    assert any(r["frontier_max_2_calls"] == "1" for r in rows)


def test_eval_cli_per_image_rows(sweep_run):
    out, _ = sweep_run
    rows = list(csv.DictReader((out / "sweep_per_image.csv").open()))
    summary_rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert {r["image"] for r in rows} == {"astronaut", "chelsea"}
    assert len(rows) == 2 * len(summary_rows)


def test_eval_cli_markdown_sections(sweep_run):
    out, _ = sweep_run
    text = (out / "sweep.md").read_text()
    assert "- Command: `fmsr-eval " in text
    assert "## Best Y-PSNR at each number of network calls" in text
    assert "## Fewest calls within 0.1 dB of the best Y-PSNR" in text
    assert "## Frontier of Y-PSNR and HF ratio with at most 2 calls" in text
    assert "## Frontier of Y-PSNR and HF ratio with at most 4 calls" in text
    assert "Bicubic upsample: Y-PSNR" in text


def test_eval_cli_rejects_unknown_grid(pair_dirs, tiny_onnx):
    lr_dir, hr_dir = pair_dirs
    proc = fmsr_eval(
        str(lr_dir), "--hr", str(hr_dir), "--model", str(tiny_onnx), "--grids", "cosine",
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown time grid 'cosine'" in proc.stderr


def test_eval_cli_max_calls_too_low(pair_dirs, tiny_onnx, tmp_path):
    lr_dir, hr_dir = pair_dirs
    out = tmp_path / "out"
    proc = fmsr_eval(
        str(lr_dir), "--hr", str(hr_dir), "--model", str(tiny_onnx), "-o", str(out),
        "--samplers", "rk4,heun", "--max-calls", "1", check=False,
    )
    assert proc.returncode == 2
    assert (
        "no setting fits --max-calls 1: the cheapest chosen sampler, heun, makes 2 network "
        "calls at 1 step; raise --max-calls to 2" in proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_eval_cli_untrained_temperature(pair_dirs, tiny_onnx, tmp_path):
    lr_dir, hr_dir = pair_dirs
    proc = fmsr_eval(
        str(lr_dir), "--hr", str(hr_dir), "--model", str(tiny_onnx), "-o", str(tmp_path / "o"),
        "--samplers", "euler", "--temperatures", "0,0.5", "--max-calls", "1", "--no-plot",
        "--max-images", "1", "--threads", "1",
    )
    assert "temperature 0.5 is outside this model's training" in proc.stderr
    assert "temperature 0 is outside" not in proc.stderr


def test_eval_cli_no_pairs(tmp_path, pair_dirs, tiny_onnx):
    lr_dir, _ = pair_dirs
    empty = tmp_path / "hr"
    empty.mkdir()
    proc = fmsr_eval(
        str(lr_dir), "--hr", str(empty), "--model", str(tiny_onnx), "--backend", "cpu",
        check=False,
    )
    assert proc.returncode == 2
    assert "has an HR in" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_cli_missing_model(pair_dirs, tmp_path):
    lr_dir, hr_dir = pair_dirs
    proc = fmsr_eval(
        str(lr_dir), "--hr", str(hr_dir), "--model", str(tmp_path / "none.onnx"), check=False
    )
    assert proc.returncode == 2
    assert "model not found" in proc.stderr


BLOCK_IMPORTS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked}:
            raise ImportError(f"{{name}} is blocked by the test")
sys.meta_path.insert(0, Block())
"""


def test_eval_cli_without_matplotlib(pair_dirs, tiny_onnx, tmp_path):
    lr_dir, hr_dir = pair_dirs
    args = [str(lr_dir), "--hr", str(hr_dir), "--model", str(tiny_onnx), "-o", str(tmp_path)]
    args += ["--backend", "cpu"]
    args += ["--samplers", "euler", "--temperatures", "0", "--max-calls", "1"]
    code = BLOCK_IMPORTS.format(blocked={"matplotlib"})
    code += "from fmsr_infer.eval_cli import main\nmain(sys.argv[1:])\n"

    proc = run_cli(sys.executable, "-c", code, *args, check=False)
    assert proc.returncode == 1
    assert "the plot needs matplotlib" in proc.stderr
    assert not list(tmp_path.iterdir())

    run_cli(sys.executable, "-c", code, *args, "--no-plot")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sweep.csv", "sweep.md", "sweep_per_image.csv",
    ]


def test_runtime_imports_without_torch_or_matplotlib():
    code = BLOCK_IMPORTS.format(blocked={"torch", "matplotlib"})
    code += "import fmsr_infer.evaluation, fmsr_infer.eval_cli, fmsr_infer.samplers\n"
    run_cli(sys.executable, "-c", code)


def test_console_script_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fmsr-eval"] == "fmsr_infer.eval_cli:main"


# ---------------------------------------------------------------------------------------
# The sweep in process


class CountingBackend:
    def __init__(self, backend):
        self.backend = backend
        self.calls = 0

    def __call__(self, x_t, cond, t):
        self.calls += 1
        return self.backend(x_t, cond, t)


def test_sweep_counts_true_calls(tiny_onnx, pair_dirs):
    lr_dir, hr_dir = pair_dirs
    info = load_info(tiny_onnx)
    backend = CountingBackend(OrtBackend(tiny_onnx, info, threads=1))
    pairs = pair_images(lr_dir, hr_dir, info.scale)
    settings = sweep_settings(["heun", "heun_euler_last", "rk4"], [GridSpec("image_end")], [0.5], 8)
    measurements = run_sweep(Upscaler(backend, info), pairs, settings)
    sampled = [m for m in measurements if m.setting is not None]
    assert backend.calls == sum(m.calls for m in sampled)
    assert backend.calls == len(pairs) * sum(network_calls(s.sampler, s.steps) for s in settings)


@pytest.mark.parametrize(
    "sampler, steps, temperature, grid",
    [("euler", 3, 0.0, "uniform"), ("heun", 2, 1.0, "uniform"), ("midpoint", 2, 0.0, "image_end")],
)
def test_sweep_matches_upscale(tiny_onnx, pair_dirs, sampler, steps, temperature, grid):
    # The sweep prepares conditioning and noise itself, so it must give the image that
    # Upscaler.upscale gives with the same settings.
    lr_dir, hr_dir = pair_dirs
    info = load_info(tiny_onnx)
    backend = OrtBackend(tiny_onnx, info, threads=1)
    pair = pair_images(lr_dir, hr_dir, info.scale)[0]
    lr, _ = load_pair(pair, info.scale)
    setting = SweepSetting(sampler, GridSpec(grid), temperature, steps)

    prepared = prepare_image(pair, info, 3)
    ours, calls = super_resolve(Upscaler(backend, info), prepared, setting, 3)
    settings = SampleSettings(
        steps=steps, sampler=sampler, seed=3, temperature=temperature, grid=grid
    )
    reference = Upscaler(backend, info).upscale(lr.astype(np.float32) / 255.0, settings)
    assert calls == reference.network_calls
    np.testing.assert_array_equal(ours, to_uint8(reference.image))


def test_upscaler_follows_grid(tiny_onnx):
    info = load_info(tiny_onnx)
    seen = []

    def backend(x_t, cond, t):
        seen.append(float(t[0]))
        return np.zeros_like(x_t)

    cond = np.zeros((1, 3, 8, 8), np.float32)
    settings = SampleSettings(steps=2, sampler="euler", grid="shifted", shift=3.0)
    Upscaler(backend, info).sample(cond, cond, settings)
    assert seen == [0.0, 0.25]


# ---------------------------------------------------------------------------------------
# Pairing, sharpness and the frontier


def test_pairing_by_stem(pair_dirs):
    lr_dir, hr_dir = pair_dirs
    pairs = pair_images(lr_dir, hr_dir, 4)
    assert [(p.stem, p.lr_path.name, p.hr_path.name) for p in pairs] == [
        ("astronaut", "astronautx4.png", "astronaut.png"),
        ("chelsea", "chelsea.png", "chelsea.png"),
    ]


def test_pairing_skips_lr_without_hr(pair_dirs, tmp_path, caplog):
    lr_dir, hr_dir = pair_dirs
    for path in lr_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(lr_dir / "chelsea.png", tmp_path / "extra.png")
    pairs = pair_images(tmp_path, hr_dir, 4)
    assert [p.stem for p in pairs] == ["astronaut", "chelsea"]
    assert "extra.png" in caplog.text


def test_load_pair_crops_hr_to_scale(pair_dirs):
    lr_dir, hr_dir = pair_dirs
    lr, hr = load_pair(ImagePair("chelsea", lr_dir / "chelsea.png", hr_dir / "chelsea.png"), 4)
    assert lr.shape == (12, 12, 3)
    assert hr.shape == (48, 48, 3)


def test_load_pair_rejects_size_mismatch(pair_dirs):
    lr_dir, hr_dir = pair_dirs
    with pytest.raises(ValueError, match="expected an HR of 48x48"):
        load_pair(ImagePair("x", lr_dir / "chelsea.png", hr_dir / "astronaut.png"), 4)


def test_sharpness_ratio_orders_blur_and_noise():
    hr = photo_arrays()["astronaut"][:128, :128]
    bicubic = to_uint8(np.clip(downsample_and_up(hr), 0, 1))
    noisy = to_uint8(hr / 255.0 + np.random.default_rng(0).normal(0, 0.05, hr.shape))
    assert sharpness_ratio(hr, hr, 4, 4) == 1.0
    assert sharpness_ratio(bicubic, hr, 4, 4) < 0.5
    assert sharpness_ratio(noisy, hr, 4, 4) > 1.2


def downsample_and_up(hr):
    from fmsr_infer.resize import upsample

    return upsample(downsample(hr / 255.0))


def test_high_frequency_energy_band():
    # A cosine below the LR Nyquist frequency puts only the Hann window's leakage into
    # the band (about 1e-6 of the energy of one above it, 4 bins from the cutoff).
    rows, cols = np.mgrid[0:64, 0:64]
    low = np.cos(2 * np.pi * cols / 16.0)  # 1/16 cycle per pixel
    high = np.cos(2 * np.pi * cols / 4.0)  # 1/4 cycle per pixel
    assert high_frequency_energy(low, 4) < 1e-5 * high_frequency_energy(high, 4)
    assert high_frequency_energy(high, 4) > 0.1


def _summary(psnr, hf_ratio, calls=1):
    setting = SweepSetting("euler", GridSpec("uniform"), 0.0, calls)
    return Summary(setting, calls, psnr, 0.9, hf_ratio, 0.0, 1)


def test_frontier_drops_dominated():
    a = _summary(30.0, 0.2)
    b = _summary(29.0, 0.5)
    dominated = _summary(28.5, 0.4)
    too_noisy = _summary(27.0, 4.0)  # |log2 4| = 2 is worse than |log2 0.5| = 1
    assert pareto_frontier([a, b, dominated, too_noisy], 8) == [a, b]


def test_frontier_respects_call_budget():
    cheap = _summary(30.0, 0.2, calls=2)
    costly = _summary(31.0, 0.3, calls=9)
    assert pareto_frontier([cheap, costly], 8) == [cheap]
    assert pareto_frontier([cheap, costly], 16) == [costly]


def test_frontier_skips_bicubic():
    bicubic = Summary(None, 0, 35.0, 0.95, 0.9, 0.0, 1)
    assert pareto_frontier([bicubic, _summary(30.0, 0.2)], 8) == [_summary(30.0, 0.2)]


def test_sweep_settings_dedupes_identical_sampling():
    grids = [GridSpec("uniform"), GridSpec("shifted", 1.0), GridSpec("image_end")]
    settings = sweep_settings(["euler", "heun_euler_last"], grids, [0.0], 3)
    labels = [s.label for s in settings]
    assert labels == [
        "euler uniform T=0 steps=1",
        "euler uniform T=0 steps=2",
        "euler image_end T=0 steps=2",
        "euler uniform T=0 steps=3",
        "euler image_end T=0 steps=3",
        "heun_euler_last uniform T=0 steps=2",
        "heun_euler_last image_end T=0 steps=2",
    ]


def test_grid_spec_parse():
    assert GridSpec.parse("shifted:0.5") == GridSpec("shifted", 0.5)
    assert GridSpec.parse("shifted").label == "shifted:3"
    with pytest.raises(ValueError, match="invalid shift 'x'"):
        GridSpec.parse("shifted:x")
    with pytest.raises(ValueError, match="applies only to the 'shifted' grid"):
        GridSpec.parse("uniform:2")
