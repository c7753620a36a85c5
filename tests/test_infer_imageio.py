"""Reading every image kind and writing outputs atomically (fmsr_infer.imageio)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fmsr_infer.imageio import (
    ImageReadError,
    PngWriter,
    atomic_output,
    load_image,
    write_png,
)


def gradient(height: int, width: int, channels: int, max_value: int) -> np.ndarray:
    """A smooth image, so that the PNG writer picks its predicting filters."""
    y, x = np.mgrid[:height, :width].astype(np.float64)
    planes = [
        (np.sin(x / (5 + c)) * np.cos(y / (7 + c)) + 1) / 2 for c in range(channels)
    ]
    return np.round(np.stack(planes, axis=2) * max_value).astype(
        np.uint16 if max_value > 255 else np.uint8
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_filter_types(data: bytes, row_bytes: int) -> set[int]:
    """Return the filter type bytes of a PNG's rows."""
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return {raw[i] for i in range(0, len(raw), row_bytes + 1)}


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_writer_round_trip(tmp_path, channels, bits):
    max_value = 65535 if bits == 16 else 255
    rng = np.random.default_rng(channels * bits)
    smooth = gradient(37, 53, channels, max_value)
    noisy = rng.integers(0, max_value + 1, size=(5, 53, channels)).astype(smooth.dtype)
    image = np.concatenate([smooth, noisy])
    buffer = io.BytesIO()
    writer = PngWriter(buffer, 53, 42, channels, bits)
    for start, stop in ((0, 1), (1, 20), (20, 42)):
        writer.write_rows(image[start:stop])
    writer.close()
    path = tmp_path / "out.png"
    path.write_bytes(buffer.getvalue())

    loaded = load_image(path)
    pixels = loaded.color if loaded.alpha is None else np.dstack([loaded.color, loaded.alpha])
    assert pixels.dtype == image.dtype
    np.testing.assert_array_equal(pixels, image)
    filters = png_filter_types(buffer.getvalue(), 53 * channels * bits // 8)
    assert len(filters) >= 2, f"expected several PNG filter types, got {filters}"


def test_png_writer_rejects_missing_rows():
    writer = PngWriter(io.BytesIO(), 4, 3, 3, 8)
    writer.write_rows(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2 of 3 rows"):
        writer.close()


def test_png_writer_output_opens_in_pillow(tmp_path):
    image = gradient(9, 11, 3, 255)
    path = tmp_path / "x.png"
    with path.open("wb") as handle:
        write_png(handle, image)
    with Image.open(path) as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), image)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    image = gradient(6, 10, 3, 255)
    image[0, 0] = 255  # an asymmetric marker
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.png"
    pil.save(path, exif=exif)

    loaded = load_image(path)
    with Image.open(path) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    np.testing.assert_array_equal(loaded.color, expected)


def test_exif_orientation_jpeg_is_upright(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 255  # left half white
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    pil.save(path, exif=exif, quality=95)

    loaded = load_image(path)
    assert loaded.color.shape == (40, 20, 3)
    assert loaded.color[:20].mean() > 200  # the white half is now on top
    assert loaded.color[20:].mean() < 50


def test_grayscale_stays_one_channel(tmp_path):
    Image.fromarray(gradient(8, 9, 1, 255)[..., 0]).save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.grayscale
    assert loaded.alpha is None
    assert loaded.bit_depth == 8


def test_bilevel_becomes_grayscale(tmp_path):
    Image.fromarray(gradient(8, 9, 1, 255)[..., 0]).convert("1").save(tmp_path / "b.png")
    loaded = load_image(tmp_path / "b.png")
    assert loaded.grayscale
    assert set(np.unique(loaded.color)) <= {0, 255}


def test_la_keeps_alpha(tmp_path):
    la = gradient(8, 9, 2, 255)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    loaded = load_image(tmp_path / "la.png")
    assert loaded.grayscale
    np.testing.assert_array_equal(loaded.color[..., 0], la[..., 0])
    np.testing.assert_array_equal(loaded.alpha, la[..., 1])


def test_palette_transparency_becomes_alpha(tmp_path):
    rgb = gradient(12, 16, 3, 255)
    palette = Image.fromarray(rgb).quantize(8)
    indices = np.asarray(palette)
    palette.save(tmp_path / "p.png", transparency=int(indices[0, 0]))
    loaded = load_image(tmp_path / "p.png")
    assert loaded.color.shape == (12, 16, 3)
    assert loaded.alpha is not None
    np.testing.assert_array_equal(loaded.alpha == 0, indices == indices[0, 0])


def test_palette_without_transparency_is_rgb(tmp_path):
    Image.fromarray(gradient(12, 16, 3, 255)).quantize(8).save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.color.shape == (12, 16, 3)
    assert loaded.alpha is None


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = gradient(16, 16, 3, 255)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as img:
        assert img.mode == "CMYK"
    loaded = load_image(tmp_path / "cmyk.jpg")
    assert loaded.color.shape == (16, 16, 3)
    assert loaded.source_mode == "CMYK"
    assert np.abs(loaded.color.astype(int) - rgb).mean() < 8


def test_16bit_gray_png(tmp_path):
    gray = gradient(7, 9, 1, 65535)[..., 0]
    Image.fromarray(gray).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.color[..., 0], gray)


def test_16bit_rgb_png_keeps_low_byte(tmp_path):
    rgb = gradient(7, 9, 3, 65535)
    rgb[0, 0] = (1, 258, 65535)  # low bytes that an 8-bit read would drop
    with (tmp_path / "c16.png").open("wb") as handle:
        write_png(handle, rgb)
    loaded = load_image(tmp_path / "c16.png")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.color, rgb)


def test_16bit_tiff_gray(tmp_path):
    gray = gradient(7, 9, 1, 65535)[..., 0]
    Image.fromarray(gray).save(tmp_path / "g16.tif")
    loaded = load_image(tmp_path / "g16.tif")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.color[..., 0], gray)


@pytest.mark.parametrize("ext", [".bmp", ".tif", ".webp"])
def test_other_formats_load(tmp_path, ext):
    rgb = gradient(10, 12, 3, 255)
    options = {"lossless": True} if ext == ".webp" else {}
    Image.fromarray(rgb).save(tmp_path / f"x{ext}", **options)
    loaded = load_image(tmp_path / f"x{ext}")
    np.testing.assert_array_equal(loaded.color, rgb)


def test_empty_file_is_rejected(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        load_image(tmp_path / "empty.png")


def test_text_file_is_rejected(tmp_path):
    (tmp_path / "notes.png").write_text("not an image\n")
    with pytest.raises(ImageReadError, match="not an image file"):
        load_image(tmp_path / "notes.png")


def test_truncated_jpeg_is_rejected(tmp_path):
    Image.fromarray(gradient(64, 64, 3, 255)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(tmp_path / "half.jpg")


def write_bomb(path: Path) -> None:
    """Write a PNG header claiming 60000 x 60000 pixels, followed by a few bytes."""
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
    path.write_bytes(data)


def test_decompression_bomb_rejected_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as fmsr-infer sets it
    write_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError, match="--max-pixels"):
        load_image(tmp_path / "bomb.png")


def test_decompression_bomb_pillow_limit_reported(tmp_path):
    write_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError, match="MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "bomb.png", max_pixels=0)


def test_pixel_limit_zero_means_none(tmp_path):
    Image.fromarray(gradient(30, 30, 3, 255)).save(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="900 pixels"):
        load_image(tmp_path / "x.png", max_pixels=899)
    assert load_image(tmp_path / "x.png", max_pixels=0).color.shape == (30, 30, 3)


def test_atomic_output_replaces_on_success(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with atomic_output(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_output_keeps_old_file_on_error(tmp_path, error):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_output(target) as handle:
            handle.write(b"partial")
            raise error()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_atomic_output_file_mode_follows_umask(tmp_path):
    import os

    target = tmp_path / "out.png"
    with atomic_output(target) as handle:
        handle.write(b"x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_color_tiff_keeps_low_byte(tmp_path, compression, channels):
    tifffile = pytest.importorskip("tifffile")
    image = gradient(40, 9, channels, 65535)
    image[0, 0, :3] = (1, 258, 65535)  # low bytes that an 8-bit read would drop
    path = tmp_path / "c16.tif"
    extra = {"extrasamples": ["unassalpha"]} if channels == 4 else {}
    tifffile.imwrite(path, image, photometric="rgb", compression=compression,
                     rowsperstrip=8, **extra)
    loaded = load_image(path)
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(loaded.color, image[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(loaded.alpha, image[..., 3])
