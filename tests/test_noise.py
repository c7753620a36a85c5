"""Counter-based noise: Philox, the libm-free ln and cos, the field, and the C++ kernel."""

from __future__ import annotations

import numpy as np
import pytest

from fmsr_infer import kernels, noise

# Random123's known-answer vectors for Philox4x32-10 (its tests/kat_vectors file).
PHILOX_KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

requires_extension = pytest.mark.skipif(
    not kernels.extension_available(),
    reason="fmsr_infer._ext is not built (python setup.py build_ext --inplace)",
)


def bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint32)


@pytest.mark.parametrize("counter, key, expected", PHILOX_KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    words = noise.philox4x32_10([np.uint32(word) for word in counter], key)
    assert tuple(int(word) for word in words) == expected


def test_philox_broadcasts_counter_arrays():
    cols = np.arange(5, dtype=np.uint32)
    words = noise.philox4x32_10((cols, np.uint32(7), np.uint32(1), np.uint32(0)), (3, 4))
    for col in range(5):
        single = noise.philox4x32_10((np.uint32(col), 7, 1, 0), (3, 4))
        assert [int(w[col]) for w in words] == [int(w) for w in single]


def test_log_uniform_close_to_numpy_log():
    rng = np.random.default_rng(0)
    u1 = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    u1 = np.concatenate([u1, np.array([0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1], np.uint32)])
    expected = np.log((u1.astype(np.float64) + 1.0) / 2.0**32)
    got = noise.log_uniform(u1)
    assert got[-1] == 0.0
    ulps = np.abs(got - expected)[:-1] / np.spacing(np.abs(expected[:-1]))
    assert ulps.max() <= 4


def test_cos_turns_close_to_numpy_cos():
    rng = np.random.default_rng(1)
    u2 = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    quarter = 2**30
    edges = [0, 1, quarter // 2, quarter - 1, quarter, 2 * quarter, 3 * quarter, 2**32 - 1]
    u2 = np.concatenate([u2, np.array(edges, dtype=np.uint32)])
    expected = np.cos(2.0 * np.pi * (u2.astype(np.float64) / 2.0**32))
    assert np.abs(noise.cos_turns(u2) - expected).max() <= 2e-15


def test_noise_is_standard_normal():
    field = noise.gaussian_noise(2024, 2, 512, 512).astype(np.float64).ravel()
    count = field.size
    assert abs(field.mean()) < 5 / np.sqrt(count)
    assert abs(field.std() - 1.0) < 5 / np.sqrt(2 * count)
    # Fraction beyond 1 and 2 sigma: 0.31731 and 0.04550 for a normal distribution.
    assert abs(np.mean(np.abs(field) > 1.0) - 0.31731) < 0.003
    assert abs(np.mean(np.abs(field) > 2.0) - 0.04550) < 0.0012


def test_noise_channels_and_seeds_are_independent():
    field = noise.gaussian_noise(7, 2, 64, 64)
    other_seed = noise.gaussian_noise(8, 1, 64, 64)[0]
    high_seed = noise.gaussian_noise(7 + 2**32, 1, 64, 64)[0]
    for other in (field[1], other_seed, high_seed):
        correlation = np.corrcoef(field[0].ravel(), other.ravel())[0, 1]
        assert abs(correlation) < 0.05


@pytest.mark.parametrize("row0, col0", [(0, 0), (5, 9), (31, 1), (12, 40)])
def test_reference_tile_equals_crop(row0, col0):
    full = noise.gaussian_noise(99, 3, 37, 53)
    tile = noise.gaussian_noise(99, 3, 6, 13, row0=row0, col0=col0)
    crop = full[:, row0 : row0 + 6, col0 : col0 + 13]
    np.testing.assert_array_equal(bits(tile), bits(np.ascontiguousarray(crop)))


def test_reference_row_blocks_are_seamless():
    # 2100 x 600 exceeds one block of the reference, so rows 1700-1800 straddle two.
    full = noise.gaussian_noise(11, 1, 2100, 600)
    tile = noise.gaussian_noise(11, 1, 100, 600, row0=1700)
    np.testing.assert_array_equal(bits(tile), bits(np.ascontiguousarray(full[:, 1700:1800])))


def test_negative_offsets_wrap_modulo_2_32():
    padded = noise.gaussian_noise(5, 1, 8, 8, row0=-3, col0=-2)
    wrapped = noise.gaussian_noise(5, 1, 3, 2, row0=2**32 - 3, col0=2**32 - 2)
    origin = noise.gaussian_noise(5, 1, 5, 6)
    np.testing.assert_array_equal(bits(padded[:, :3, :2]), bits(wrapped))
    np.testing.assert_array_equal(bits(padded[:, 3:, 2:]), bits(origin))


def test_batch_equals_single_seeds():
    seeds = [0, 1, 2**64 - 1]
    batch = noise.gaussian_noise_batch(seeds, 2, 5, 7, row0=3, col0=-4)
    for index, seed in enumerate(seeds):
        single = noise.gaussian_noise(seed, 2, 5, 7, row0=3, col0=-4)
        np.testing.assert_array_equal(bits(batch[index]), bits(single))


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range_rejected(seed):
    with pytest.raises(ValueError, match="seed"):
        noise.gaussian_noise(seed, 1, 2, 2)
    with pytest.raises(ValueError, match="seed"):
        kernels.gaussian_noise(seed, 1, 2, 2)


def test_negative_extent_rejected():
    with pytest.raises(ValueError, match="height"):
        kernels.gaussian_noise(0, 1, -1, 2)


# ---------------------------------------------------------------------------------
# The C++ kernel against the reference, bit for bit.


@requires_extension
@pytest.mark.parametrize(
    "seeds, channels, height, width, row0, col0",
    [
        ([0], 1, 1, 1, 0, 0),
        ([1], 3, 3, 5, 0, 0),
        ([12345678901234567], 3, 37, 53, 11, 7),
        ([0, 2**32 + 5, 2**64 - 1], 3, 37, 53, -9, -20),
        ([42], 2, 4, 1000, 2**32 - 2, 2**31),
    ],
)
def test_cpp_noise_bit_exact(seeds, channels, height, width, row0, col0):
    cpp = kernels.gaussian_noise_batch(seeds, channels, height, width, row0, col0, backend="cpp")
    reference = noise.gaussian_noise_batch(seeds, channels, height, width, row0, col0)
    np.testing.assert_array_equal(bits(cpp), bits(reference))


@requires_extension
def test_cpp_tile_equals_crop():
    full = kernels.gaussian_noise(3, 3, 64, 80, backend="cpp")
    tile = kernels.gaussian_noise(3, 3, 20, 33, row0=40, col0=17, backend="cpp")
    np.testing.assert_array_equal(bits(tile), bits(np.ascontiguousarray(full[:, 40:60, 17:50])))


@requires_extension
def test_cpp_noise_writes_into_out():
    out = np.zeros((3, 16, 16), dtype=np.float32)
    result = kernels.gaussian_noise(9, 3, 16, 16, out=out, backend="cpp")
    assert result.base is out or result is out
    np.testing.assert_array_equal(bits(out), bits(noise.gaussian_noise(9, 3, 16, 16)))


def test_noise_out_with_wrong_shape_rejected():
    with pytest.raises(ValueError, match="shape"):
        kernels.gaussian_noise(0, 3, 4, 4, out=np.zeros((3, 4, 5), np.float32))
