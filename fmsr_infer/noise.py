"""Counter-based Gaussian noise, the numpy reference of the compiled noise kernels.

The noise of an image is a field: the value at (seed, channel, row, col) depends on
nothing else, so any tile of the field can be drawn on its own and equals the crop of
the whole field. Each value is computed as follows, identically in numpy, C++ and CUDA:

1. Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011,
   with the Random123 constants) on counter (col, row, channel, 0) and key
   (seed & 0xffffffff, seed >> 32), with row and col taken modulo 2^32.
2. Box-Muller on the first two output words u1, u2:
   z = sqrt(-2 ln U1) cos(2 pi U2) with U1 = (u1 + 1) / 2^32 in (0, 1] and
   U2 = u2 / 2^32, in float64, then rounded to float32.

ln and cos are evaluated here from +, -, *, / and bit manipulation only, plus sqrt,
which IEEE 754 rounds correctly everywhere. `cpp_ext/noise_math.h` uses the same
constants and the same order of operations, so all backends agree bit for bit. That
holds only while no backend fuses a multiply and an add, which is why the C++ build
uses -ffp-contract=off and the CUDA build --fmad=false.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_SEED_LIMIT = 1 << 64
# Elements per block of gaussian_noise_batch, about 8 MB per uint64 temporary.
_BLOCK_ELEMENTS = 1 << 20

# ln(2) split so that exponent * _LN2_HI is exact (the low 32 bits of _LN2_HI are zero).
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
_HALF_PI = float.fromhex("0x1.921fb54442d18p+0")

# 1 / (2k + 1) for k = 0..10: ln(m) = 2 s sum_k s^(2k) / (2k + 1) with s = (m-1)/(m+1).
_ATANH_COEFFS = [1.0 / (2 * k + 1) for k in range(11)]
# (-1)^k / (2k)! and (-1)^k / (2k+1)! for k = 0..8, the Taylor series on [0, pi/4].
_COS_COEFFS = [
    float.fromhex(h)
    for h in (
        "0x1.0000000000000p+0",
        "-0x1.0000000000000p-1",
        "0x1.5555555555555p-5",
        "-0x1.6c16c16c16c17p-10",
        "0x1.a01a01a01a01ap-16",
        "-0x1.27e4fb7789f5cp-22",
        "0x1.1eed8eff8d898p-29",
        "-0x1.93974a8c07c9dp-37",
        "0x1.ae7f3e733b81fp-45",
    )
]
_SIN_COEFFS = [
    float.fromhex(h)
    for h in (
        "0x1.0000000000000p+0",
        "-0x1.5555555555555p-3",
        "0x1.1111111111111p-7",
        "-0x1.a01a01a01a01ap-13",
        "0x1.71de3a556c734p-19",
        "-0x1.ae64567f544e4p-26",
        "0x1.6124613a86d09p-33",
        "-0x1.ae7f3e733b81fp-41",
        "0x1.952c77030ad4ap-49",
    )
]


def philox4x32_10(
    counter: Sequence[np.ndarray], key: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Apply Philox4x32-10 to a counter of four uint32 arrays (broadcastable) and a key.

    Returns the four uint32 output words, each of the broadcast shape of the counter.
    """
    shape = np.broadcast_shapes(*(np.shape(word) for word in counter))
    c0, c1, c2, c3 = (np.broadcast_to(np.asarray(word, dtype=np.uint32), shape) for word in counter)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for round_index in range(PHILOX_ROUNDS):
        if round_index > 0:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        product0 = c0.astype(np.uint64) * np.uint64(PHILOX_M0)
        product1 = c2.astype(np.uint64) * np.uint64(PHILOX_M1)
        hi0 = (product0 >> np.uint64(32)).astype(np.uint32)
        lo0 = (product0 & np.uint64(_MASK32)).astype(np.uint32)
        hi1 = (product1 >> np.uint64(32)).astype(np.uint32)
        lo1 = (product1 & np.uint64(_MASK32)).astype(np.uint32)
        c0, c1, c2, c3 = (
            hi1 ^ c1 ^ np.uint32(k0),
            lo1,
            hi0 ^ c3 ^ np.uint32(k1),
            lo0,
        )
    return c0, c1, c2, c3


def _horner(coeffs: list[float], x: np.ndarray) -> np.ndarray:
    """Evaluate sum_k coeffs[k] x^k by Horner's rule, highest power first."""
    result = np.full_like(x, coeffs[-1])
    for coeff in reversed(coeffs[:-1]):
        result = result * x + coeff
    return result


def log_uniform(u1: np.ndarray) -> np.ndarray:
    """Compute ln((u1 + 1) / 2^32) in float64 for uint32 `u1`, without libm."""
    u = (u1.astype(np.float64) + 1.0) * 2.0**-32  # exact: u1 + 1 <= 2^32

    # u = mantissa * 2^exponent with mantissa in [sqrt(1/2), sqrt(2)).
    bits = u.view(np.uint64)
    exponent = (bits >> np.uint64(52)).astype(np.int64) - 1023
    mantissa_bits = (bits & np.uint64(0x000FFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000)
    mantissa = mantissa_bits.view(np.float64)
    large = mantissa > _SQRT2
    mantissa = np.where(large, mantissa * 0.5, mantissa)
    exponent = exponent + large

    # ln(mantissa) = 2 atanh(s), |s| <= 0.1716, so 11 terms reach double precision.
    s = (mantissa - 1.0) / (mantissa + 1.0)
    series = _horner(_ATANH_COEFFS, s * s)
    e = exponent.astype(np.float64)
    return e * _LN2_HI + (e * _LN2_LO + 2.0 * s * series)


def cos_turns(u2: np.ndarray) -> np.ndarray:
    """Compute cos(2 pi u2 / 2^32) in float64 for uint32 `u2`, without libm.

    The angle is reduced exactly with integers: the top two bits give the quadrant, and
    positions past the middle of a quadrant are folded onto [0, pi/4] by symmetry.
    """
    quadrant = u2 >> np.uint32(30)
    position = u2 & np.uint32(0x3FFFFFFF)  # angle (pi/2) * position / 2^30
    folded = position > np.uint32(0x20000000)
    reduced = np.where(folded, np.uint32(0x40000000) - position, position)
    angle = reduced.astype(np.float64) * 2.0**-30 * _HALF_PI  # in [0, pi/4]

    angle2 = angle * angle
    cos_angle = _horner(_COS_COEFFS, angle2)
    sin_angle = angle * _horner(_SIN_COEFFS, angle2)
    cos_position = np.where(folded, sin_angle, cos_angle)
    sin_position = np.where(folded, cos_angle, sin_angle)
    return np.select(
        [quadrant == 0, quadrant == 1, quadrant == 2],
        [cos_position, -sin_position, -cos_position],
        sin_position,
    )


def box_muller(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Map two uint32 words to one standard normal float32 value, elementwise."""
    radius = np.sqrt(-2.0 * log_uniform(u1))
    return (radius * cos_turns(u2)).astype(np.float32)


def check_seed(seed: int) -> int:
    """Return `seed` as an int, raising ValueError unless 0 <= seed < 2^64."""
    seed = int(seed)
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return seed


def _check_extent(channels: int, height: int, width: int) -> None:
    for name, value in (("channels", channels), ("height", height), ("width", width)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
    if channels > _MASK32 + 1:
        raise ValueError(f"channels must be at most 2^32, got {channels}")


def gaussian_noise_batch(
    seeds: Sequence[int],
    channels: int,
    height: int,
    width: int,
    row0: int = 0,
    col0: int = 0,
) -> np.ndarray:
    """Draw the tile [row0:row0+height, col0:col0+width] of the noise field of each seed.

    Returns float32 [len(seeds), channels, height, width]. row0 and col0 may be negative
    for padded tiles, because rows and columns wrap modulo 2^32 in the counter.
    """
    seeds = [check_seed(seed) for seed in seeds]
    _check_extent(channels, height, width)
    out = np.empty((len(seeds), channels, height, width), dtype=np.float32)
    rows = ((np.arange(height, dtype=np.int64) + row0) % (_MASK32 + 1)).astype(np.uint32)
    cols = ((np.arange(width, dtype=np.int64) + col0) % (_MASK32 + 1)).astype(np.uint32)
    # Blocks of rows bound the uint64 and float64 temporaries; values do not depend on it.
    block = max(1, _BLOCK_ELEMENTS // max(width, 1))
    for index, seed in enumerate(seeds):
        key = (seed & _MASK32, seed >> 32)
        for channel in range(channels):
            for start in range(0, height, block):
                block_rows = rows[start : start + block, None]
                counter = (cols[None, :], block_rows, np.uint32(channel), np.uint32(0))
                u1, u2, _, _ = philox4x32_10(counter, key)
                out[index, channel, start : start + block] = box_muller(u1, u2)
    return out


def gaussian_noise(
    seed: int, channels: int, height: int, width: int, row0: int = 0, col0: int = 0
) -> np.ndarray:
    """Draw the tile [row0:row0+height, col0:col0+width] of the noise field of `seed`.

    Returns float32 [channels, height, width], like `gaussian_noise_batch`.
    """
    return gaussian_noise_batch([seed], channels, height, width, row0, col0)[0]
