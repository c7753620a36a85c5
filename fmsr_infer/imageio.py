"""Read every image kind fmsr-infer accepts, and write outputs atomically.

`load_image` turns a file into an `LRImage`: colour (1 channel for grayscale inputs,
3 otherwise) and an optional alpha channel, as uint8 or uint16 arrays with the EXIF
orientation applied. Pillow decodes every kind. Only 16-bit colour PNGs need care,
because Pillow (10 to 13) keeps just the high byte of their samples, so they are
decoded twice through Pillow's PNG decoder, once for each byte.

Outputs are written to a hidden temporary file in the destination folder and renamed
into place (`atomic_output`), so an interrupted run never leaves a partial image.
PNG outputs are written by `PngWriter`, which takes rows as they are finished, so a
large output is never held in memory as a whole.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import struct
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 50_000_000

# EXIF orientation tag (0x0112) values, as numpy operations on [H, W, ...] arrays. They
# match PIL.ImageOps.exif_transpose, which a test checks for all eight values.
EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_OPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, k=1),
}

# Pillow's raw modes for 16-bit colour (big-endian in PNG, either order in TIFF), which
# keep the high byte of each sample, and the raw mode of the other byte order, which
# applied to the same data keeps the low byte.
# libtiff's decoder hands Pillow samples in native byte order ("16N").
_NATIVE_OTHER = "B" if sys.byteorder == "little" else "L"
_LOW_BYTE_RAWMODE = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGB;16N": f"RGB;16{_NATIVE_OTHER}",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
    "RGBA;16N": f"RGBA;16{_NATIVE_OTHER}",
}


class ImageReadError(ValueError):
    """A file that cannot be read as an image. The message gives the reason."""


@dataclass
class LRImage:
    """A decoded input image.

    color: [H, W, 1] (grayscale) or [H, W, 3] (RGB), uint8 or uint16.
    alpha: [H, W] of the same dtype, or None.
    """

    color: np.ndarray
    alpha: np.ndarray | None
    source_format: str  # Pillow's format name: "PNG", "JPEG", "WEBP", ...
    source_mode: str  # Pillow's mode of the file, before conversion
    icc_profile: bytes | None = None

    @property
    def height(self) -> int:
        return self.color.shape[0]

    @property
    def width(self) -> int:
        return self.color.shape[1]

    @property
    def grayscale(self) -> bool:
        return self.color.shape[2] == 1

    @property
    def bit_depth(self) -> int:
        return 16 if self.color.dtype == np.uint16 else 8

    @property
    def max_value(self) -> int:
        return 65535 if self.bit_depth == 16 else 255


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LRImage:
    """Decode an image file of any supported kind; raises ImageReadError with a reason.

    `max_pixels` (width x height, 0 for no limit) is checked against the header before
    any pixel data is decoded, which stops decompression bombs. Pillow's own limit
    (`PIL.Image.MAX_IMAGE_PIXELS`) applies too, and fmsr-infer turns it off.
    """
    if path.stat().st_size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file that Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{exc}; set PIL.Image.MAX_IMAGE_PIXELS to allow it") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageReadError(f"image has no pixels ({width}x{height})")
        if max_pixels and width * height > max_pixels:
            raise ImageReadError(
                f"{width}x{height} = {width * height} pixels is over the limit of "
                f"{max_pixels} pixels; raise it with --max-pixels if the file is trusted"
            )
        if getattr(img, "n_frames", 1) > 1:
            log.warning("%s has %d frames; using the first", path, img.n_frames)
        # The raw mode is read first because reading EXIF may decode a PNG, which
        # empties img.tile.
        rawmode = _single_rawmode(img)
        orientation = _exif_orientation(img)
        try:
            image = _decode(path, img, rawmode)
        except ImageReadError:
            raise
        except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ...
            raise ImageReadError(f"cannot decode {img.format} data: {exc}") from exc

    op = _ORIENTATION_OPS.get(orientation)
    if op is not None:
        image.color = np.ascontiguousarray(op(image.color))
        if image.alpha is not None:
            image.alpha = np.ascontiguousarray(op(image.alpha))
    return image


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception as exc:  # a malformed EXIF block must not cost the image
        log.warning("ignoring unreadable EXIF data: %s", exc)
        return 1


def _decode(path: Path, img: Image.Image, rawmode: str | None) -> LRImage:
    """Decode the pixels of an opened image into an LRImage (orientation not applied)."""
    fmt = img.format or "unknown"
    mode = img.mode
    icc = img.info.get("icc_profile")

    def result(color, alpha=None, profile=icc):
        color = np.asarray(color)
        if color.ndim == 2:
            color = color[..., None]
        return LRImage(np.ascontiguousarray(color), alpha, fmt, mode, profile)

    # 16-bit PNG and TIFF colour, which Pillow would truncate to 8 bits.
    if fmt in ("PNG", "TIFF") and rawmode in _LOW_BYTE_RAWMODE:
        high = _decode_with_rawmode(path, rawmode)
        low = _decode_with_rawmode(path, _LOW_BYTE_RAWMODE[rawmode])
        pixels = (high.astype(np.uint16) << 8) | low
        if pixels.shape[2] == 4:
            return result(pixels[..., :3], np.ascontiguousarray(pixels[..., 3]))
        key = img.info.get("transparency")
        if isinstance(key, tuple) and len(key) == 3:
            alpha = np.where(np.all(pixels == np.array(key, np.uint16), axis=2), 0, 65535)
            return result(pixels, alpha.astype(np.uint16))
        return result(pixels)
    if fmt == "PNG" and rawmode == "LA;16B":
        # Read each pixel's four bytes (L high, L low, A high, A low) as RGBA.
        raw = _decode_with_rawmode(path, "RGBA").astype(np.uint16)
        gray = (raw[..., 0] << 8) | raw[..., 1]
        alpha = (raw[..., 2] << 8) | raw[..., 3]
        return result(gray, alpha)

    img.load()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return result(np.asarray(img).astype(np.uint16))
    if mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                "32-bit integer pixels outside [0, 65535] are not supported; "
                "convert the image to 8 or 16 bits"
            )
        return result(values.astype(np.uint16))
    if mode == "F":
        raise ImageReadError(
            "32-bit float pixels are not supported; convert the image to 8 or 16 bits"
        )
    if mode == "CMYK":
        return result(np.asarray(_cmyk_to_rgb(img, icc)), profile=None)
    if mode == "1":
        return result(np.asarray(img.convert("L")))
    if mode == "L" and not img.has_transparency_data:
        return result(np.asarray(img))
    if mode in ("L", "LA", "La"):
        la = np.asarray(img.convert("LA"))
        return result(la[..., 0], np.ascontiguousarray(la[..., 1]))
    if mode in ("RGBA", "RGBa", "PA") or img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA"))
        return result(rgba[..., :3], np.ascontiguousarray(rgba[..., 3]))
    return result(np.asarray(img.convert("RGB")))


def _tile_rawmode(args) -> str | None:
    """Return the raw mode of a Pillow tile: its args, or their first item."""
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _single_rawmode(img: Image.Image) -> str | None:
    """Return the raw mode shared by all tiles (TIFF strips) of an image, else None."""
    rawmodes = {_tile_rawmode(tile[3]) for tile in img.tile}
    return rawmodes.pop() if len(rawmodes) == 1 else None


def _decode_with_rawmode(path: Path, rawmode: str) -> np.ndarray:
    """Decode an image's pixel data with Pillow's decoder, unpacked by `rawmode`.

    Pillow's decoders (zlib with the PNG row filters, the TIFF codecs) work on the
    sample layout of the file and then unpack each pixel by the raw mode, so the raw
    mode selects which bytes are kept.
    """
    with Image.open(path) as img:
        tiles = []
        for tile in img.tile:
            args = tile[3]
            args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
            if hasattr(tile, "_replace"):  # Pillow 11 and later: ImageFile._Tile
                tiles.append(tile._replace(args=args))
            else:
                tiles.append((*tile[:3], args))
        img.tile = tiles
        img.load()
        return np.array(img)


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert CMYK to RGB through the embedded ICC profile, else by Pillow's formula."""
    if icc:
        try:
            from PIL import ImageCms  # absent when Pillow was built without LittleCMS
        except ImportError:
            log.warning("Pillow has no ImageCms; converting CMYK without its ICC profile")
            return img.convert("RGB")
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError) as exc:
            log.warning("ignoring the CMYK ICC profile (%s); converting without it", exc)
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so it runs to completion."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path` and rename it onto `path` when the block ends.

    On any exception, KeyboardInterrupt included, the temporary file is removed and
    `path` is left as it was. The temporary file is hidden (`.NAME.XXXX.tmp`).
    """
    with deferred_signals():
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual mode
        handle = os.fdopen(fd, "wb")
    tmp = Path(tmp_name)
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
    except BaseException:
        with deferred_signals():
            handle.close()
            tmp.unlink(missing_ok=True)
        raise
    with deferred_signals():
        handle.close()
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (L, LA, RGB, RGBA)
_PNG_ROWS_PER_FILTER_CHUNK = 64
_PNG_IDAT_BYTES = 1 << 20


class PngWriter:
    """Stream an image into a PNG file row by row (8 or 16 bits, L, LA, RGB or RGBA).

    Rows arrive as [n, width, channels] uint8 or uint16 arrays, top to bottom. Each row
    gets the PNG filter (None, Sub, Up, Average or Paeth) with the smallest sum of
    absolute filtered bytes, which is libpng's heuristic. zlib compresses the filtered
    rows as they come, into IDAT chunks of about 1 MiB.
    """

    def __init__(
        self,
        file: BinaryIO,
        width: int,
        height: int,
        channels: int,
        bit_depth: int,
        icc_profile: bytes | None = None,
        compress_level: int = 6,
    ):
        if channels not in _PNG_COLOR_TYPES or bit_depth not in (8, 16):
            raise ValueError(
                f"PNG output needs 1 to 4 channels and 8 or 16 bits, got {channels} "
                f"channels and {bit_depth} bits"
            )
        self.file = file
        self.width, self.height, self.channels = width, height, channels
        self.dtype = np.dtype(">u2") if bit_depth == 16 else np.dtype(np.uint8)
        self.bytes_per_pixel = channels * self.dtype.itemsize
        self.rows_written = 0
        self.previous_row = np.zeros(width * self.bytes_per_pixel, dtype=np.uint8)
        self.compressor = zlib.compressobj(compress_level)
        self.pending = bytearray()

        file.write(_PNG_SIGNATURE)
        header = struct.pack(
            ">IIBBBBB", width, height, bit_depth, _PNG_COLOR_TYPES[channels], 0, 0, 0
        )
        self._chunk(b"IHDR", header)
        if icc_profile:
            self._chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
        self.file.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc))

    def write_rows(self, rows: np.ndarray) -> None:
        """Append [n, width, channels] rows below those already written."""
        if rows.ndim == 2:
            rows = rows[..., None]
        expected = (self.width, self.channels)
        if rows.shape[1:] != expected:
            raise ValueError(
                f"rows have shape {rows.shape}, expected [n, {self.width}, {self.channels}]"
            )
        if self.rows_written + rows.shape[0] > self.height:
            raise ValueError(f"more than {self.height} rows written to a PNG")
        data = np.ascontiguousarray(rows, dtype=self.dtype).view(np.uint8)
        data = data.reshape(rows.shape[0], -1)
        for start in range(0, data.shape[0], _PNG_ROWS_PER_FILTER_CHUNK):
            chunk = data[start : start + _PNG_ROWS_PER_FILTER_CHUNK]
            self.pending += self.compressor.compress(self._filter_rows(chunk))
            self.previous_row = chunk[-1].copy()
            if len(self.pending) >= _PNG_IDAT_BYTES:
                self._chunk(b"IDAT", bytes(self.pending))
                self.pending.clear()
        self.rows_written += rows.shape[0]

    def _filter_rows(self, rows: np.ndarray) -> bytes:
        """Filter [n, row_bytes] uint8 rows; returns the bytes with one filter byte per row."""
        bpp = self.bytes_per_pixel
        cur = rows.astype(np.int16)
        up = np.vstack([self.previous_row[None].astype(np.int16), cur[:-1]])
        left = np.zeros_like(cur)
        left[:, bpp:] = cur[:, :-bpp]
        up_left = np.zeros_like(cur)
        up_left[:, bpp:] = up[:, :-bpp]

        # Paeth predictor: the neighbour closest to left + up - up_left, ties in that order.
        estimate = left + up - up_left
        dist_left = np.abs(estimate - left)
        dist_up = np.abs(estimate - up)
        dist_up_left = np.abs(estimate - up_left)
        paeth = np.where(
            (dist_left <= dist_up) & (dist_left <= dist_up_left),
            left,
            np.where(dist_up <= dist_up_left, up, up_left),
        )
        candidates = np.stack(
            [cur, cur - left, cur - up, cur - (left + up) // 2, cur - paeth]
        ).astype(np.uint8)
        cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
        best = np.argmin(cost, axis=0)
        chosen = candidates[best, np.arange(rows.shape[0])]
        out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
        out[:, 0] = best
        out[:, 1:] = chosen
        return out.tobytes()

    def close(self) -> None:
        """Finish the file; raises ValueError unless every row was written."""
        if self.rows_written != self.height:
            raise ValueError(f"PNG has {self.rows_written} of {self.height} rows written")
        self.pending += self.compressor.flush()
        self._chunk(b"IDAT", bytes(self.pending))
        self.pending.clear()
        self._chunk(b"IEND", b"")


def write_png(file: BinaryIO, image: np.ndarray, icc_profile: bytes | None = None) -> None:
    """Write a whole [H, W] or [H, W, C] uint8 or uint16 image as PNG."""
    if image.ndim == 2:
        image = image[..., None]
    bits = 16 if image.dtype == np.uint16 else 8
    writer = PngWriter(file, image.shape[1], image.shape[0], image.shape[2], bits, icc_profile)
    writer.write_rows(image)
    writer.close()


def save_with_pillow(
    file: BinaryIO, image: np.ndarray, fmt: str, quality: int, icc_profile: bytes | None
) -> None:
    """Write an 8-bit [H, W, C] image as JPEG or WebP (C = 1 or 3; 2 or 4 for WebP)."""
    if image.dtype != np.uint8:
        raise ValueError(f"{fmt} output needs 8-bit pixels, got {image.dtype}")
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image, modes[image.shape[2]])
    if fmt == "WEBP" and pil.mode in ("L", "LA"):
        pil = pil.convert("RGBA" if pil.mode == "LA" else "RGB")
    options = {"quality": quality}
    if icc_profile:
        options["icc_profile"] = icc_profile
    pil.save(file, format=fmt, **options)
