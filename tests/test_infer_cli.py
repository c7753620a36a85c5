"""fmsr-infer on folders it did not curate: image kinds, bad input, naming, options.

Every test runs the console script as a subprocess on files it generates, with the
freshly trained tiny model and one or two sampler steps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import photo_arrays, run_cli
from fmsr_infer.imageio import load_image, write_png
from fmsr_infer.resize import downsample, upsample


def gradient(height: int, width: int, channels: int, max_value: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width].astype(np.float64)
    planes = [(np.sin(x / (3 + c)) * np.cos(y / (4 + c)) + 1) / 2 for c in range(channels)]
    dtype = np.uint16 if max_value > 255 else np.uint8
    return np.round(np.stack(planes, axis=2) * max_value).astype(dtype)


def infer(*args, check=False, **kwargs) -> subprocess.CompletedProcess:
    return run_cli("fmsr-infer", *map(str, args), check=check, **kwargs)


def assert_complete_images(folder: Path) -> list[Path]:
    """Every file under `folder` is a fully decodable image and none is a temporary."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        assert not path.name.endswith(".tmp"), f"partial file left: {path}"
        with Image.open(path) as img:
            img.load()
    return files


def png_bytes(width: int, height: int) -> bytes:
    """A PNG header claiming width x height RGB pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------
# Every image kind, in one folder run


@pytest.fixture(scope="module")
def kinds_run(tiny_onnx, tmp_path_factory):
    src = tmp_path_factory.mktemp("kinds")
    rgb = photo_arrays()["astronaut"][::16, ::16][:24, :20]  # 24 x 20
    Image.fromarray(rgb).save(src / "rgb.png")
    Image.fromarray(rgb[..., 1]).save(src / "gray.png")
    Image.fromarray(np.dstack([rgb[..., 0], gradient(24, 20, 1, 255)]), "LA").save(src / "la.png")
    Image.fromarray(np.dstack([rgb, gradient(24, 20, 1, 255)]), "RGBA").save(src / "rgba.png")
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(src / "palette.png", transparency=int(np.asarray(palette)[0, 0]))
    Image.fromarray(rgb).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    Image.fromarray(gradient(24, 20, 1, 65535)[..., 0]).save(src / "gray16.png")
    with (src / "rgb16.png").open("wb") as handle:
        write_png(handle, gradient(24, 20, 3, 65535))
    portrait = np.zeros((20, 30, 3), np.uint8)
    portrait[:, :15] = 255  # stored sideways: the white half is on the left
    pil = Image.fromarray(portrait)
    exif = pil.getexif()
    exif[0x0112] = 6  # display needs a 90 degree clockwise turn
    pil.save(src / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(rgb).save(src / "webp.webp", lossless=True)
    Image.fromarray(rgb).save(src / "bmp.bmp")
    Image.fromarray(rgb).save(src / "tiff.tif")
    Image.fromarray(rgb[:1, :1]).save(src / "one.png")
    Image.fromarray(rgb[:5, :3]).save(src / "small.png")  # 3 wide, 5 tall
    Image.fromarray(rgb).save(src / "naïve café.png")

    out = tmp_path_factory.mktemp("kinds_out")
    proc = infer(src, "--model", tiny_onnx, "-o", out, "--steps", "1")
    return src, out, proc


def test_kinds_run_succeeds(kinds_run):
    src, out, proc = kinds_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{len(list(src.iterdir()))} images in" in proc.stdout
    files = assert_complete_images(out)
    assert len(files) == len(list(src.iterdir()))


@pytest.mark.parametrize(
    "name, mode",
    [
        ("rgb", "RGB"), ("gray", "L"), ("la", "LA"), ("rgba", "RGBA"), ("palette", "RGBA"),
        ("cmyk", "RGB"), ("gray16", "I;16"), ("webp", "RGB"), ("bmp", "RGB"), ("tiff", "RGB"),
        ("naïve café", "RGB"),
    ],
)
def test_kind_keeps_mode_and_scales(kinds_run, name, mode):
    src, out, _ = kinds_run
    source = next(p for p in src.iterdir() if p.stem == name)
    with Image.open(source) as lr, Image.open(out / f"{name}_x4_s1.png") as sr:
        assert sr.mode == mode
        assert sr.size == (lr.size[0] * 4, lr.size[1] * 4)


def test_kind_alpha_is_bicubic(kinds_run):
    src, out, _ = kinds_run
    with Image.open(src / "rgba.png") as lr, Image.open(out / "rgba_x4_s1.png") as sr:
        alpha_lr = np.asarray(lr)[..., 3] / 255.0
        alpha_sr = np.asarray(sr)[..., 3].astype(int)
    expected = np.floor(np.clip(upsample(alpha_lr), 0, 1) * 255 + 0.5)
    assert np.abs(alpha_sr - expected).max() <= 1


def test_kind_palette_transparency_kept(kinds_run):
    _, out, _ = kinds_run
    with Image.open(out / "palette_x4_s1.png") as sr:
        alpha = np.asarray(sr)[..., 3]
    assert alpha[:2, :2].max() == 0  # the transparent corner index
    assert alpha.max() == 255


def test_kind_16bit_rgb_stays_16bit(kinds_run):
    _, out, _ = kinds_run
    sr = load_image(out / "rgb16_x4_s1.png")
    assert sr.bit_depth == 16
    assert sr.color.shape == (96, 80, 3)
    assert np.mean(sr.color % 257 != 0) > 0.5, "values carry more than 8 bits"


def test_kind_16bit_gray_close_to_bicubic(kinds_run):
    src, out, _ = kinds_run
    lr = load_image(src / "gray16.png").color[..., 0] / 65535.0
    sr = load_image(out / "gray16_x4_s1.png")
    assert sr.bit_depth == 16
    assert sr.grayscale
    # The tiny network has barely left its start, the bicubic upsample.
    assert np.abs(sr.color[..., 0] / 65535.0 - np.clip(upsample(lr), 0, 1)).mean() < 0.02


def test_kind_exif_rotation_applied(kinds_run):
    _, out, _ = kinds_run
    with Image.open(out / "rotated_x4_s1.png") as sr:
        assert sr.size == (80, 120)  # 20 x 30 stored, 30 x 20 displayed, times 4
        pixels = np.asarray(sr.convert("L")).astype(float)
    assert pixels[:50].mean() > 200  # the white half is on top once upright
    assert pixels[70:].mean() < 55


def test_kind_tiny_images_padded(kinds_run):
    _, out, _ = kinds_run
    with Image.open(out / "one_x4_s1.png") as one, Image.open(out / "small_x4_s1.png") as small:
        assert one.size == (4, 4)
        assert small.size == (12, 20)


# ---------------------------------------------------------------------------------------
# Bad input: each file fails on its own line, the rest of the folder goes on


@pytest.fixture(scope="module")
def bad_run(tiny_onnx, tmp_path_factory):
    src = tmp_path_factory.mktemp("bad")
    photo = photo_arrays()["chelsea"][::20, ::20]
    Image.fromarray(photo).save(src / "good.png")
    (src / "sub").mkdir()
    Image.fromarray(photo).save(src / "sub" / "inner.png")
    (src / "notes.txt").write_text("shopping list\n")
    (src / "empty.png").write_bytes(b"")
    (src / "fake.png").write_text("this is text\n")
    Image.fromarray(photo_arrays()["coffee"][::4, ::4]).save(src / "whole.jpg", quality=90)
    data = (src / "whole.jpg").read_bytes()
    (src / "whole.jpg").unlink()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (src / "bomb.png").write_bytes(png_bytes(60000, 60000))
    Image.fromarray(photo).save(src / "a.png")
    Image.fromarray(photo).save(src / "a.jpg", quality=90)
    out = tmp_path_factory.mktemp("bad_out")
    proc = infer(src, "--model", tiny_onnx, "-o", out, "--steps", "1")
    return src, out, proc


def test_bad_input_exit_status_and_summary(bad_run):
    _, _, proc = bad_run
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "5 of 7 inputs failed:" in proc.stderr


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.png", "empty file (0 bytes)"),
        ("fake.png", "not an image file"),
        ("truncated.jpg", "truncated"),
        ("bomb.png", "--max-pixels"),
        ("a.png", "already the output of a.jpg"),
    ],
)
def test_bad_input_line_names_file(bad_run, name, reason):
    src, _, proc = bad_run
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR failed")]
    matching = [line for line in lines if str(src / name) in line]
    assert len(matching) == 1, proc.stderr
    assert reason in matching[0]


def test_bad_input_skips_folder_and_text(bad_run):
    src, _, proc = bad_run
    assert f"skipped {src / 'sub'}: a folder (pass --recursive" in proc.stderr
    assert f"skipped {src / 'notes.txt'}: not an image file name" in proc.stderr


def test_bad_input_rest_of_folder_written(bad_run):
    _, out, _ = bad_run
    files = assert_complete_images(out)
    assert sorted(p.name for p in files) == ["a_x4_s1.png", "good_x4_s1.png"]


def test_recursive_mirrors_subfolders(bad_run, tiny_onnx, tmp_path):
    src, _, _ = bad_run
    proc = infer(src, "--model", tiny_onnx, "-o", tmp_path, "--steps", "1", "--recursive")
    assert proc.returncode == 1
    assert (tmp_path / "sub" / "inner_x4_s1.png").is_file()
    assert f"skipped {src / 'sub'}" not in proc.stderr


def test_missing_input_is_clear(tiny_onnx, tmp_path):
    proc = infer(tmp_path / "nothing", "--model", tiny_onnx, "-o", tmp_path / "o")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_output_is_clear(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    (tmp_path / "file").write_text("a file where the output folder would go\n")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "file" / "out")
    assert proc.returncode == 2
    assert "cannot create the output folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_model_is_clear(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    bad.with_suffix(".json").write_text(tiny_onnx.with_suffix(".json").read_text())
    proc = infer(tmp_path / "x.png", "--model", bad, "-o", tmp_path / "o")
    assert proc.returncode == 2
    assert "cannot load ONNX model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_model_without_metadata_is_clear(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(tiny_onnx.read_bytes())
    proc = infer(tmp_path / "x.png", "--model", lonely, "-o", tmp_path / "o")
    assert proc.returncode == 2
    assert "metadata" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_tile_is_usage_error(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o", "--tile", "30")
    assert proc.returncode == 2
    assert "--tile 30 is not a multiple" in proc.stderr


def test_pixel_limit_option_raises_limit(tiny_onnx, tmp_path):
    Image.fromarray(gradient(10, 10, 3, 255)).save(tmp_path / "x.png")
    low = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o",
                "--steps", "1", "--max-pixels", "99")
    assert low.returncode == 1
    assert "100 pixels is over the limit of 99" in low.stderr
    high = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o",
                 "--steps", "1", "--max-pixels", "100")
    assert high.returncode == 0, high.stderr


# ---------------------------------------------------------------------------------------
# Nothing lost: inputs never overwritten, resumable, interrupts leave no partial file


def digest_folder(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_output_into_input_folder_keeps_inputs(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 10, 3, 255)).save(tmp_path / "a.png")
    Image.fromarray(gradient(6, 6, 3, 255)).save(tmp_path / "b.jpg")
    before = digest_folder(tmp_path)
    first = infer(tmp_path, "--model", tiny_onnx, "-o", tmp_path, "--steps", "1")
    assert first.returncode == 0, first.stderr
    after = digest_folder(tmp_path)
    assert {name: after[name] for name in before} == before
    assert sorted(set(after) - set(before)) == ["a_x4_s1.png", "b_x4_s1.png"]

    # A second run takes the outputs for earlier outputs, not for new inputs.
    second = infer(tmp_path, "--model", tiny_onnx, "-o", tmp_path, "--steps", "1")
    assert second.returncode == 0, second.stderr
    assert "taken as an earlier output" in second.stderr
    assert sorted(digest_folder(tmp_path)) == sorted(after)


def test_empty_suffix_never_overwrites_input(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 10, 3, 255)).save(tmp_path / "a.png")
    before = digest_folder(tmp_path)
    proc = infer(tmp_path, "--model", tiny_onnx, "-o", tmp_path, "--steps", "1", "--suffix", "")
    assert proc.returncode == 1
    assert "would overwrite an input file" in proc.stderr
    assert digest_folder(tmp_path) == before


def test_skip_existing_resumes(tiny_onnx, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        Image.fromarray(gradient(8, 10, 3, 255)).save(src / f"{name}.png")
    out = tmp_path / "out"
    assert infer(src, "--model", tiny_onnx, "-o", out, "--steps", "1").returncode == 0
    (out / "b_x4_s1.png").unlink()
    kept = (out / "a_x4_s1.png").stat().st_mtime_ns
    proc = infer(src, "--model", tiny_onnx, "-o", out, "--steps", "1", "--skip-existing")
    assert proc.returncode == 0, proc.stderr
    assert "1 image in" in proc.stdout
    assert "(--skip-existing)" in proc.stderr
    assert (out / "a_x4_s1.png").stat().st_mtime_ns == kept
    assert (out / "b_x4_s1.png").is_file()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_no_partial_file(tiny_onnx, tmp_path, signum):
    src = tmp_path / "src"
    src.mkdir()
    photo = photo_arrays()["rocket"]
    for index in range(6):
        Image.fromarray(photo[index * 20 : index * 20 + 120, :160]).save(src / f"p{index}.png")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        ["fmsr-infer", str(src), "--model", str(tiny_onnx), "-o", str(out), "--steps", "2",
         "--tile", "64", "--tile-overlap", "16", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Wait until an output is being written: its temporary file exists.
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".tmp") for p in out.iterdir()):
        assert proc.poll() is None, f"fmsr-infer ended before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "no output started within 120 s"
        time.sleep(0.01)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    files = assert_complete_images(out)
    assert len(files) < 6


# ---------------------------------------------------------------------------------------
# Output names and formats


def test_ext_auto_keeps_format(tiny_onnx, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rgb = gradient(8, 10, 3, 255)
    Image.fromarray(rgb).save(src / "a.jpg")
    Image.fromarray(rgb).save(src / "b.webp")
    Image.fromarray(rgb).save(src / "c.bmp")
    out = tmp_path / "out"
    proc = infer(src, "--model", tiny_onnx, "-o", out, "--steps", "1", "--ext", "auto",
                 "--suffix", "_{sampler}_{seed}")
    assert proc.returncode == 0, proc.stderr
    formats = {}
    for path in assert_complete_images(out):
        with Image.open(path) as img:
            formats[path.name] = img.format
    # The tiny model is trained from config.yaml, whose recommended sampler is midpoint.
    assert formats == {
        "a_midpoint_0.jpg": "JPEG", "b_midpoint_0.webp": "WEBP", "c_midpoint_0.png": "PNG"
    }


def test_ext_jpg_rejects_alpha(tiny_onnx, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(gradient(8, 10, 4, 255), "RGBA").save(src / "alpha.png")
    Image.fromarray(gradient(8, 10, 3, 255)).save(src / "plain.png")
    out = tmp_path / "out"
    proc = infer(src, "--model", tiny_onnx, "-o", out, "--steps", "1", "--ext", "jpg")
    assert proc.returncode == 1
    assert "alpha channel, which JPEG cannot store" in proc.stderr
    assert [p.name for p in assert_complete_images(out)] == ["plain_x4_s1.jpg"]


def test_ext_webp_keeps_alpha(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 10, 4, 255), "RGBA").save(tmp_path / "alpha.png")
    proc = infer(tmp_path / "alpha.png", "--model", tiny_onnx, "-o", tmp_path / "out",
                 "--steps", "1", "--ext", "webp")
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "out" / "alpha_x4_s1.webp") as img:
        assert img.mode == "RGBA"
        assert img.size == (40, 32)


def test_bad_suffix_is_usage_error(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    for suffix, message in (("_{nope}", "invalid --suffix"), ("/up", "path separator")):
        proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o",
                     "--suffix", suffix)
        assert proc.returncode == 2
        assert message in proc.stderr


# ---------------------------------------------------------------------------------------
# Sampler settings: time grid, shift, and temperatures outside training


def upscale_reference(model, lr_path, **settings):
    """The output image that fmsr_infer.pipeline gives for these SampleSettings."""
    from fmsr_infer.backend_ort import OrtBackend
    from fmsr_infer.metrics import to_uint8
    from fmsr_infer.model_info import load_info
    from fmsr_infer.pipeline import SampleSettings, Upscaler

    info = load_info(model)
    lr = np.asarray(Image.open(lr_path).convert("RGB"), dtype=np.float32) / 255.0
    result = Upscaler(OrtBackend(model, info, threads=1), info).upscale(
        lr, SampleSettings(**settings)
    )
    return to_uint8(result.image)


@pytest.mark.parametrize(
    "options, settings",
    [
        (["--time-grid", "image_end"], {"grid": "image_end"}),
        (["--time-grid", "shifted", "--shift", "0.5"], {"grid": "shifted", "shift": 0.5}),
        (["--time-grid", "shifted"], {"grid": "shifted", "shift": None}),
    ],
)
def test_time_grid_option_follows_grid(tiny_onnx, tmp_path, options, settings):
    Image.fromarray(photo_arrays()["chelsea"][:24, :32]).save(tmp_path / "cat.png")
    proc = infer(tmp_path / "cat.png", "--model", tiny_onnx, "-o", tmp_path / "out",
                 "--steps", "2", "--sampler", "euler", "--temperature", "0",
                 "--suffix", "_{grid}", "--tile", "0", *options)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / f"cat_{settings['grid']}.png"
    expected = upscale_reference(
        tiny_onnx, tmp_path / "cat.png", steps=2, sampler="euler", temperature=0.0, **settings
    )
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    # A different grid gives a different image, so the option is not ignored.
    uniform = upscale_reference(
        tiny_onnx, tmp_path / "cat.png", steps=2, sampler="euler", temperature=0.0
    )
    assert not np.array_equal(expected, uniform)
    assert f"on the {settings['grid']} grid" in proc.stdout


def test_shift_needs_shifted_grid(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o", "--shift", "2")
    assert proc.returncode == 2
    assert "--shift 2 applies only to the shifted time grid, not to 'uniform'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    "options, message",
    [
        (["--temperature", "nan"], "--temperature nan is not a number; use a value in [0, 2]"),
        (["--time-grid", "shifted", "--shift", "nan"], "--shift nan is not a number"),
    ],
)
def test_nan_values_rejected(tiny_onnx, tmp_path, options, message):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o", *options)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_summary_names_the_shift(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o",
                 "--steps", "1", "--sampler", "euler", "--time-grid", "shifted", "--shift", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "euler 1 step on the shifted grid (shift 0.5), 1 tile, 1 network call," in proc.stdout


def test_untrained_default_temperature_warns(tiny_onnx, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    meta = json.loads(tiny_onnx.with_suffix(".json").read_text())
    meta["temperature_default"] = 0.5
    model.with_suffix(".json").write_text(json.dumps(meta))
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", model, "-o", tmp_path / "o", "--steps", "1")
    assert proc.returncode == 0, proc.stderr
    assert "the model's default temperature 0.5 is outside this model's training" in proc.stderr


def test_untrained_temperature_warns(tiny_onnx, tmp_path):
    # The tiny model is trained with zero_noise_prob 0.3 and noise scale one: it saw the
    # noise scales 0 and 1 only.
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    warned = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "a",
                   "--steps", "1", "--temperature", "0.5")
    assert warned.returncode == 0, warned.stderr
    assert (
        "--temperature 0.5 is outside this model's training, which saw the noise scales "
        "0 and 1 only" in warned.stderr
    )
    for temperature in ("0", "1"):
        proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / temperature,
                     "--steps", "1", "--temperature", temperature)
        assert proc.returncode == 0, proc.stderr
        assert "outside this model's training" not in proc.stderr


def test_bundled_model_default_sampler(tmp_path):
    Image.fromarray(photo_arrays()["coffee"][:16, :20]).save(tmp_path / "cup.png")
    proc = infer(tmp_path / "cup.png", "-o", tmp_path / "out", "--tile", "0")
    assert proc.returncode == 0, proc.stderr
    assert "midpoint 3 steps on the uniform grid" in proc.stdout
    assert "6 network calls" in proc.stdout
    assert (tmp_path / "out" / "cup_x4_s3.png").is_file()


# ---------------------------------------------------------------------------------------
# Scores against HR, comparison grids, verbosity and help


def test_hr_scores_and_grid(tiny_onnx, tmp_path):
    hr_dir, lr_dir = tmp_path / "HR", tmp_path / "LR"
    hr_dir.mkdir()
    lr_dir.mkdir()
    photos = photo_arrays()
    for name, stem in (("astronaut", "baby"), ("coffee", "bird")):
        hr = photos[name][100:165, 100:161]  # 65 x 61: mod-crop to 64 x 60 is needed
        Image.fromarray(hr).save(hr_dir / f"{stem}.png")
        lr = downsample(hr[:64, :60] / 255.0)
        lr8 = np.clip(np.floor(lr * 255 + 0.5), 0, 255).astype(np.uint8)
        lr_name = f"{stem}x4.png" if stem == "baby" else f"{stem}.png"  # both namings
        Image.fromarray(lr8).save(lr_dir / lr_name)
    out = tmp_path / "out"
    proc = infer(lr_dir, "--model", tiny_onnx, "-o", out, "--steps", "1", "--hr", hr_dir, "--grid")
    assert proc.returncode == 0, proc.stderr
    assert "mean of 2 images: PSNR-Y" in proc.stdout

    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["babyx4.png", "bird.png", "mean"]
    psnr_y = [float(row["psnr_y_db"]) for row in rows]
    assert all(15 < value < 60 for value in psnr_y)
    assert psnr_y[2] == pytest.approx((psnr_y[0] + psnr_y[1]) / 2, abs=1e-3)
    assert all(0 < float(row["ssim_y"]) <= 1 for row in rows)

    with Image.open(out / "grids" / "babyx4_x4_s1_grid.png") as grid:
        assert grid.size == (3 * 60 + 2 * 4, 64)


def test_hr_missing_is_failure(tiny_onnx, tmp_path):
    (tmp_path / "HR").mkdir()
    Image.fromarray(gradient(16, 16, 3, 255)).save(tmp_path / "lonely.png")
    proc = infer(tmp_path / "lonely.png", "--model", tiny_onnx, "-o", tmp_path / "out",
                 "--steps", "1", "--hr", tmp_path / "HR")
    assert proc.returncode == 1
    assert "no HR image named lonely.*" in proc.stderr
    assert (tmp_path / "out" / "lonely_x4_s1.png").is_file()


def test_quiet_prints_nothing(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o",
                 "--steps", "1", "--quiet")
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr == ""


def test_verbose_reports_tiles(tiny_onnx, tmp_path):
    Image.fromarray(gradient(40, 40, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-o", tmp_path / "o",
                 "--steps", "1", "--tile", "64", "--tile-overlap", "16", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG 160x160 output: 9 tiles of 64x64, overlap 16" in proc.stderr


def test_quiet_and_verbose_conflict(tiny_onnx, tmp_path):
    Image.fromarray(gradient(8, 8, 3, 255)).save(tmp_path / "x.png")
    proc = infer(tmp_path / "x.png", "--model", tiny_onnx, "-q", "-v")
    assert proc.returncode == 2
    assert "exclude each other" in proc.stderr


def test_help_gives_units_and_defaults():
    proc = infer("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for expected in (
        "Tile side in output pixels",
        "Overlap of neighbouring tiles in output pixels",
        "[default: 32;",
        "in MiB",
        "[default: 1024;",
        "in pixels (width x height)",
        "[default: 50000000;",
        "[default: _x{scale}_s{steps}]",
        "--skip-existing",
        "--recursive",
        "--hr DIRECTORY",
    ):
        assert expected in text, expected
