"""CPU kernels of fmsr_infer.kernels against their numpy references and exact results."""

from __future__ import annotations

import itertools
import logging
import sys

import numpy as np
import pytest

from fmsr_infer import kernels, resize

requires_extension = pytest.mark.skipif(
    not kernels.extension_available(),
    reason="fmsr_infer._ext is not built (python setup.py build_ext --inplace)",
)

SHAPES = [(1, 1), (3, 5), (37, 53)]
PIXEL_MAX = {np.uint8: 255, np.uint16: 65535, np.float32: 1}


def random_lr(rng, dtype, shape):
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, PIXEL_MAX[dtype] + 1, size=shape).astype(dtype)


def upsample_definition(lr: np.ndarray) -> np.ndarray:
    """2 * resize.upsample(lr01) - 1 as [C, 4H, 4W] float64, the kernel's definition."""
    lr01 = lr.astype(np.float64) / PIXEL_MAX[lr.dtype.type]
    return (2.0 * resize.upsample(lr01) - 1.0).transpose(2, 0, 1)


def torch_upsample(x):
    """Gather-and-weight torch upsample of [N, C, H, W] float64 with resize's tables."""
    import torch

    row_w, row_i, col_w, col_i = (torch.from_numpy(t) for t in resize.upsample_tables(*x.shape[2:]))
    by_rows = (x[:, :, row_i.long(), :] * row_w.double()[:, :, None]).sum(dim=3)
    return (by_rows[:, :, :, col_i.long()] * col_w.double()).sum(dim=4)


# ---------------------------------------------------------------------------------
# Upsample


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_upsample_matches_definition(dtype, shape, channels, backend):
    lr = random_lr(np.random.default_rng(0), dtype, (*shape, channels))
    got = kernels.upsample_condition(lr, backend=backend)
    expected = upsample_definition(lr)
    assert got.shape == (channels, 4 * shape[0], 4 * shape[1])
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_upsample_batch_of_three(backend):
    lr = random_lr(np.random.default_rng(1), np.uint8, (3, 37, 53, 3))
    got = kernels.upsample_condition(lr, backend=backend)
    assert got.shape == (3, 3, 148, 212)
    for index in range(3):
        assert np.abs(got[index] - upsample_definition(lr[index])).max() <= 1e-6


@requires_extension
def test_upsample_gray_2d_input():
    lr = random_lr(np.random.default_rng(2), np.uint16, (5, 3))
    got = kernels.upsample_condition(lr, backend="cpp")
    assert got.shape == (1, 20, 12)
    assert np.abs(got - upsample_definition(lr[:, :, None])).max() <= 1e-6


@requires_extension
@pytest.mark.parametrize(
    "row0, col0, height, width", [(0, 0, 1, 1), (5, 17, 40, 9), (100, 3, 48, 209)]
)
def test_upsample_tile_equals_crop(row0, col0, height, width):
    lr = random_lr(np.random.default_rng(3), np.uint8, (37, 53, 3))
    full = kernels.upsample_condition(lr, backend="cpp")
    tile = kernels.upsample_condition(
        lr, out_row0=row0, out_col0=col0, out_h=height, out_w=width, backend="cpp"
    )
    np.testing.assert_array_equal(tile, full[:, row0 : row0 + height, col0 : col0 + width])


def test_upsample_numpy_in_row_blocks():
    # 80 LR rows give 320 output rows, more than one block of the numpy upsample.
    lr = random_lr(np.random.default_rng(9), np.uint8, (80, 6, 3))
    got = kernels.upsample_condition(lr, backend="numpy")
    assert np.abs(got - upsample_definition(lr)).max() <= 1e-6
    tile = kernels.upsample_condition(lr, out_row0=250, out_h=20, backend="numpy")
    np.testing.assert_array_equal(tile, got[:, 250:270])


def test_upsample_tile_numpy_equals_crop():
    lr = random_lr(np.random.default_rng(4), np.float32, (9, 7, 3))
    full = kernels.upsample_condition(lr, backend="numpy")
    tile = kernels.upsample_condition(
        lr, out_row0=7, out_col0=2, out_h=20, out_w=11, backend="numpy"
    )
    np.testing.assert_array_equal(tile, full[:, 7:27, 2:13])


@requires_extension
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_upsample_float16_rounds_float32_result(dtype):
    lr = random_lr(np.random.default_rng(5), dtype, (2, 37, 53, 3))
    half = kernels.upsample_condition(lr, dtype=np.float16, backend="cpp")
    single = kernels.upsample_condition(lr, dtype=np.float32, backend="cpp")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half.view(np.uint16), single.astype(np.float16).view(np.uint16))


@requires_extension
def test_upsample_writes_into_network_buffer():
    lr = random_lr(np.random.default_rng(6), np.uint8, (2, 3, 5, 3))
    buffer = np.full((2, 3, 12, 20), 7.0, dtype=np.float32)
    result = kernels.upsample_condition(lr, out=buffer, backend="cpp")
    assert result is buffer
    np.testing.assert_array_equal(buffer, kernels.upsample_condition(lr, backend="cpp"))


@requires_extension
def test_upsample_matches_torch_helper():
    pytest.importorskip("torch")
    import torch

    lr = random_lr(np.random.default_rng(7), np.float32, (3, 37, 53, 3))
    got = kernels.upsample_condition(lr, backend="cpp")
    x = torch.from_numpy(lr.astype(np.float64)).permute(0, 3, 1, 2)
    expected = (2.0 * torch_upsample(x) - 1.0).numpy()
    assert np.abs(got - expected).max() <= 1e-6


@requires_extension
def test_upsample_matches_trainer_resize_torch():
    pytest.importorskip("torch")
    resize_torch = pytest.importorskip("fmsr_train.resize_torch")
    import torch

    lr = random_lr(np.random.default_rng(8), np.float32, (3, 37, 53, 3))
    got = kernels.upsample_condition(lr, backend="cpp")
    x = torch.from_numpy(lr).permute(0, 3, 1, 2).contiguous()
    expected = (2.0 * resize_torch.upsample(x) - 1.0).double().numpy()
    assert np.abs(got - expected).max() <= 1e-6


def test_upsample_tile_outside_rejected():
    lr = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="rows"):
        kernels.upsample_condition(lr, out_row0=10, out_h=7)
    with pytest.raises(ValueError, match="columns"):
        kernels.upsample_condition(lr, out_col0=-1)


def test_upsample_invalid_dtypes_rejected():
    with pytest.raises(ValueError, match="lr must be"):
        kernels.upsample_condition(np.zeros((4, 4, 3), np.float64))
    with pytest.raises(ValueError, match="dtype"):
        kernels.upsample_condition(np.zeros((4, 4, 3), np.uint8), dtype=np.float64)


# ---------------------------------------------------------------------------------
# ODE state updates


def state_and_outputs(shape, net_dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    a = rng.standard_normal(shape).astype(net_dtype)
    b = rng.standard_normal(shape).astype(net_dtype)
    return x, a, b


STATE_SHAPES = [(1, 1, 1), (3, 3, 5), (3, 37, 53), (3, 3, 37, 53)]


@requires_extension
@pytest.mark.parametrize("shape", STATE_SHAPES)
@pytest.mark.parametrize("net_dtype", [np.float32, np.float16])
def test_steps_equal_reference(shape, net_dtype):
    x, v, v_pred = state_and_outputs(shape, net_dtype)
    t, dt, floor = 0.3, 0.125, 0.05
    x_pred = (x + 0.1).astype(np.float32)
    cases = {
        "euler_step": lambda b, x: kernels.euler_step(x, v, dt, backend=b),
        "heun_predict": lambda b, x: kernels.heun_predict(x, v, dt, backend=b),
        "heun_correct": lambda b, x: kernels.heun_correct(x, v, v_pred, dt, backend=b),
        "euler_step_x1": lambda b, x: kernels.euler_step_x1(x, v, t, dt, floor, backend=b),
        "heun_predict_x1": lambda b, x: kernels.heun_predict_x1(x, v, t, dt, floor, backend=b),
        "heun_correct_x1": lambda b, x: kernels.heun_correct_x1(
            x, v, x_pred, v_pred, t, dt, floor, backend=b
        ),
        "midpoint_step_x1": lambda b, x: kernels.midpoint_step_x1(
            x, x_pred, v_pred, t, dt, floor, backend=b
        ),
    }
    for name, step in cases.items():
        cpp = step("cpp", x.copy())
        reference = step("numpy", x.copy())
        assert np.abs(cpp - reference).max() <= 1e-6, name
        np.testing.assert_array_equal(cpp, reference, err_msg=name)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_euler_exact_on_constant_field(backend):
    x0 = np.random.default_rng(1).standard_normal((3, 8, 8)).astype(np.float32)
    velocity = np.full_like(x0, 0.5)
    x = x0.copy()
    for _ in range(4):
        kernels.euler_step(x, velocity, 0.25, backend=backend)
    np.testing.assert_allclose(x, x0 + 0.5, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_heun_exact_on_linear_field(backend):
    # v(x, t) = t is linear in t, so one Heun step from 0 to 1 integrates it exactly: 0.5.
    x = np.zeros((1, 4, 4), np.float32)
    v_now = np.zeros_like(x)
    x_pred = kernels.heun_predict(x, v_now, 1.0, backend=backend)
    np.testing.assert_array_equal(x_pred, x)
    v_next = np.ones_like(x)
    kernels.heun_correct(x, v_now, v_next, 1.0, backend=backend)
    np.testing.assert_array_equal(x, np.full_like(x, 0.5))


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_x1_euler_to_end_reaches_prediction(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    x1_hat = rng.uniform(-1, 1, (3, 5, 7)).astype(np.float32)
    kernels.euler_step_x1(x, x1_hat, 0.75, 0.25, 1e-3, backend=backend)
    np.testing.assert_allclose(x, x1_hat, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_x1_floor_bounds_velocity_at_end(backend):
    x = np.zeros((1, 2, 2), np.float32)
    x1_hat = np.ones((1, 2, 2), np.float32)
    kernels.euler_step_x1(x, x1_hat, 1.0, 0.01, 0.1, backend=backend)
    np.testing.assert_allclose(x, np.full_like(x, 0.1), rtol=1e-6)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_x1_heun_matches_velocity_heun(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 6)).astype(np.float32)
    x1_hat = rng.standard_normal((2, 6, 6)).astype(np.float32)
    x1_hat_pred = rng.standard_normal((2, 6, 6)).astype(np.float32)
    t, dt = 0.2, 0.3
    x_pred = kernels.heun_predict_x1(x, x1_hat, t, dt, 1e-3, backend=backend)
    v = (x1_hat - x) / (1 - t)
    np.testing.assert_allclose(x_pred, x + dt * v, rtol=0, atol=1e-5)
    v_pred = (x1_hat_pred - x_pred) / (1 - t - dt)
    expected = x + 0.5 * dt * (v + v_pred)
    kernels.heun_correct_x1(x, x1_hat, x_pred, x1_hat_pred, t, dt, 1e-3, backend=backend)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_midpoint_exact_on_linear_field(backend):
    # v(x, t) = t is linear in t, so one midpoint step from 0 to 1 is exact: v(0.5) = 0.5.
    x = np.zeros((1, 4, 4), np.float32)
    x_mid = kernels.heun_predict(x, np.zeros_like(x), 0.5, backend=backend)
    np.testing.assert_array_equal(x_mid, x)
    kernels.euler_step(x, np.full_like(x, 0.5), 1.0, backend=backend)
    np.testing.assert_array_equal(x, np.full_like(x, 0.5))


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_x1_midpoint_exact_on_linear_field(backend):
    # The same field as x1 predictions, x1_hat = x + (1 - t) * t: 0.25 at x = 0, t = 0.5.
    x = np.zeros((1, 4, 4), np.float32)
    x_mid = kernels.heun_predict_x1(x, np.zeros_like(x), 0.0, 0.5, 1e-3, backend=backend)
    np.testing.assert_array_equal(x_mid, x)
    x1_hat_mid = np.full_like(x, 0.25)
    kernels.midpoint_step_x1(x, x_mid, x1_hat_mid, 0.0, 1.0, 1e-3, backend=backend)
    np.testing.assert_array_equal(x, np.full_like(x, 0.5))


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
@pytest.mark.parametrize("net_dtype", [np.float32, np.float16])
def test_x1_midpoint_matches_velocity_midpoint(backend, net_dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    x1_hat = rng.standard_normal((3, 5, 7)).astype(net_dtype)
    x1_hat_mid = rng.standard_normal((3, 5, 7)).astype(net_dtype)
    t, dt, floor = 0.2, 0.3, 1e-3
    x_mid = kernels.heun_predict_x1(x, x1_hat, t, 0.5 * dt, floor, backend=backend)
    v = (x1_hat.astype(np.float64) - x) / (1 - t)
    np.testing.assert_allclose(x_mid, x + 0.5 * dt * v, rtol=0, atol=1e-5)
    v_mid = (x1_hat_mid.astype(np.float64) - x_mid) / (1 - (t + 0.5 * dt))
    expected = x + dt * v_mid
    kernels.midpoint_step_x1(x, x_mid, x1_hat_mid, t, dt, floor, backend=backend)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_x1_midpoint_floor_at_end(backend):
    # t_mid = 0.98 + 0.02 = 1, so the floor 0.1 divides: x += 0.04 / 0.1 * (1 - 0).
    x = np.zeros((1, 2, 2), np.float32)
    x1_hat_mid = np.ones((1, 2, 2), np.float16)
    kernels.midpoint_step_x1(x, x.copy(), x1_hat_mid, 0.98, 0.04, 0.1, backend=backend)
    np.testing.assert_allclose(x, np.full_like(x, 0.4), rtol=1e-6)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_x1_midpoint_reads_non_contiguous_inputs(backend):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    x_mid = rng.standard_normal((3, 7, 5)).astype(np.float32).transpose(0, 2, 1)
    x1_hat_mid = rng.standard_normal((3, 5, 14)).astype(np.float32)[:, :, ::2]
    expected = kernels.midpoint_step_x1(
        x.copy(),
        np.ascontiguousarray(x_mid),
        np.ascontiguousarray(x1_hat_mid),
        0.3,
        0.1,
        0.05,
        backend=backend,
    )
    got = kernels.midpoint_step_x1(x, x_mid, x1_hat_mid, 0.3, 0.1, 0.05, backend=backend)
    np.testing.assert_array_equal(got, expected)


def test_x1_midpoint_rejects_invalid_arguments():
    x = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="x_mid must be float32"):
        kernels.midpoint_step_x1(x, x.astype(np.float16), x, 0.5, 0.1, 0.05)
    with pytest.raises(ValueError, match="x_mid must have the shape of x"):
        kernels.midpoint_step_x1(x, np.zeros((3, 4, 5), np.float32), x, 0.5, 0.1, 0.05)
    with pytest.raises(ValueError, match="x1_hat_mid must be float32 or float16"):
        kernels.midpoint_step_x1(x, x, np.zeros((3, 4, 4)), 0.5, 0.1, 0.05)
    with pytest.raises(ValueError, match="x1_hat_mid must have the shape of x"):
        kernels.midpoint_step_x1(x, x, np.zeros((3, 4), np.float32), 0.5, 0.1, 0.05)
    with pytest.raises(ValueError, match="floor"):
        kernels.midpoint_step_x1(x, x, x, 0.5, 0.1, 0.0)
    with pytest.raises(ValueError, match="written in place"):
        kernels.midpoint_step_x1(x[:, ::2], x[:, ::2], x[:, ::2], 0.5, 0.1, 0.05)


@requires_extension
def test_x1_midpoint_extension_validates_arguments():
    from fmsr_infer import _ext

    x = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="x_mid must have the shape of x"):
        _ext.midpoint_step_x1(x, np.zeros((3, 4, 5), np.float32), x, 0.5, 0.1, 0.05)
    with pytest.raises(ValueError, match="x_mid must be float32"):
        _ext.midpoint_step_x1(x, x.astype(np.float16), x, 0.5, 0.1, 0.05)
    with pytest.raises(ValueError, match="x1_hat_mid must be float32 or float16"):
        _ext.midpoint_step_x1(x, x, x.astype(np.uint8), 0.5, 0.1, 0.05)
    with pytest.raises(ValueError, match="floor must be positive"):
        _ext.midpoint_step_x1(x, x, x, 0.5, 0.1, -1.0)
    x.setflags(write=False)
    with pytest.raises(ValueError, match="x must be writeable"):
        _ext.midpoint_step_x1(x, x.copy(), x.copy(), 0.5, 0.1, 0.05)


def linear_field(x, t):
    """A float32 velocity field linear in both the state and the time."""
    return (np.float32(0.3) * x + np.float32(t) * np.float32(0.7)).astype(np.float32)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_midpoint_kernels_equal_sampler(backend):
    from fmsr_infer.samplers import make_grid, midpoint

    grid = make_grid("shifted", 4, shift=3.0)
    x0 = np.random.default_rng(10).standard_normal((3, 5, 7)).astype(np.float32)
    expected, _ = midpoint(linear_field, x0.copy(), grid)

    # The velocity case: heun_predict with dt/2 to x_mid, an Euler step with v(x_mid).
    x = x0.copy()
    for t_cur, t_next in itertools.pairwise(grid):
        dt = t_next - t_cur
        x_mid = kernels.heun_predict(x, linear_field(x, t_cur), 0.5 * dt, backend=backend)
        kernels.euler_step(x, linear_field(x_mid, t_cur + 0.5 * dt), dt, backend=backend)
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_x1_midpoint_kernels_match_sampler(backend):
    from fmsr_infer import flow
    from fmsr_infer.samplers import make_grid, midpoint

    floor = 0.05
    grid = make_grid("uniform", 4)
    x0 = np.random.default_rng(11).standard_normal((3, 5, 7)).astype(np.float32)
    target = np.random.default_rng(12).uniform(-1, 1, (3, 5, 7)).astype(np.float32)

    def predict_x1(x, t):
        return (target + np.float32(0.2 * t) * x).astype(np.float32)

    def velocity(x, t):
        return flow.velocity_from_x1(predict_x1(x, t), x, np.float32(t), floor)

    expected, _ = midpoint(velocity, x0.copy(), grid)
    x = x0.copy()
    for t_cur, t_next in itertools.pairwise(grid):
        dt = t_next - t_cur
        x1_hat = predict_x1(x, t_cur)
        x_mid = kernels.heun_predict_x1(x, x1_hat, t_cur, 0.5 * dt, floor, backend=backend)
        x1_hat_mid = predict_x1(x_mid, t_cur + 0.5 * dt)
        kernels.midpoint_step_x1(x, x_mid, x1_hat_mid, t_cur, dt, floor, backend=backend)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)


def test_step_rejects_non_contiguous_state():
    x = np.zeros((3, 8, 8), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.euler_step(x, np.zeros((3, 4, 8), np.float32), 0.1)


def test_step_rejects_float64_velocity():
    x = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="float32 or float16"):
        kernels.euler_step(x, np.zeros((3, 4, 4)), 0.1)


def test_step_rejects_shape_mismatch():
    x = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="shape"):
        kernels.heun_predict(x, np.zeros((3, 4, 5), np.float32), 0.1)


@pytest.mark.parametrize("floor", [0.0, -1.0, float("nan")])
def test_x1_step_rejects_non_positive_floor(floor):
    x = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="floor"):
        kernels.euler_step_x1(x, x.copy(), 0.5, 0.1, floor)


# ---------------------------------------------------------------------------------
# Output


@requires_extension
@pytest.mark.parametrize("shape", STATE_SHAPES)
@pytest.mark.parametrize("pixel", [np.uint8, np.uint16])
@pytest.mark.parametrize("upsample_dtype", [None, np.float32, np.float16])
def test_state_to_image_equals_reference(shape, pixel, upsample_dtype):
    rng = np.random.default_rng(4)
    x = rng.uniform(-1.3, 1.3, shape).astype(np.float32)
    x.flat[0] = np.nan
    upsample, scale = None, 1.0
    if upsample_dtype is not None:
        upsample = rng.uniform(-1, 1, shape).astype(upsample_dtype)
        scale = 3.0
    cpp = kernels.state_to_image(x, upsample, scale, dtype=pixel, backend="cpp")
    reference = kernels.state_to_image(x, upsample, scale, dtype=pixel, backend="numpy")
    channels, height, width = shape[-3:]
    assert cpp.shape == (*shape[:-3], height, width, channels)
    assert cpp.dtype == pixel
    np.testing.assert_array_equal(cpp, reference)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_state_to_image_known_values(backend):
    x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0, np.nan], np.float32).reshape(1, 1, 6)
    np.testing.assert_array_equal(
        kernels.state_to_image(x, backend=backend)[0, :, 0], [0, 0, 128, 255, 255, 0]
    )
    np.testing.assert_array_equal(
        kernels.state_to_image(x, dtype=np.uint16, backend=backend)[0, :, 0],
        [0, 0, 32768, 65535, 65535, 0],
    )


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_state_to_image_interleaves_channels(backend):
    x = np.stack([np.full((2, 3), value, np.float32) for value in (-1.0, 0.0, 1.0)])
    image = kernels.state_to_image(x, backend=backend)
    assert image.shape == (2, 3, 3)
    np.testing.assert_array_equal(image[1, 2], [0, 128, 255])


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_state_to_image_residual(backend):
    upsample = np.full((1, 1, 2), 0.5, np.float32)
    x = np.array([[[1.0, -2.0]]], np.float32)
    image = kernels.state_to_image(x, upsample, residual_scale=4.0, backend=backend)
    # y = 0.5 + 1/4 = 0.75 -> (y + 1) / 2 * 255 = 223.1 -> 223; y = 0.5 - 2/4 = 0 -> 128.
    np.testing.assert_array_equal(image[0, :, 0], [223, 128])


def test_state_to_image_scale_without_upsample_rejected():
    with pytest.raises(ValueError, match="residual_scale"):
        kernels.state_to_image(np.zeros((3, 2, 2), np.float32), residual_scale=2.0)


def test_state_to_image_rejects_zero_scale():
    x = np.zeros((3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="residual_scale"):
        kernels.state_to_image(x, x.copy(), residual_scale=0.0)


# ---------------------------------------------------------------------------------
# Tile blend


def feather(height, width):
    rows = np.minimum(np.arange(1, height + 1), np.arange(height, 0, -1))
    cols = np.minimum(np.arange(1, width + 1), np.arange(width, 0, -1))
    return (rows[:, None] * cols[None, :]).astype(np.float32)


@requires_extension
@pytest.mark.parametrize("tile_dtype", [np.float32, np.float16])
def test_blend_equals_reference(tile_dtype):
    rng = np.random.default_rng(5)
    channels, height, width = 3, 37, 53
    placements = [(0, 0, 16, 16), (10, 30, 27, 23), (36, 52, 1, 1), (0, 20, 37, 13)]
    results = {}
    for backend in ("cpp", "numpy"):
        accum = np.zeros((channels, height, width), np.float32)
        weight_sum = np.zeros((height, width), np.float32)
        tiles = np.random.default_rng(6)
        for row0, col0, tile_h, tile_w in placements:
            tile = tiles.standard_normal((channels, tile_h, tile_w)).astype(tile_dtype)
            kernels.blend_tile(
                accum, weight_sum, tile, feather(tile_h, tile_w), row0, col0, backend=backend
            )
        results[backend] = (
            accum,
            weight_sum,
            kernels.normalize_blend(accum, weight_sum, backend=backend),
        )
    for cpp, reference in zip(results["cpp"], results["numpy"]):
        assert np.abs(cpp - reference).max() <= 1e-6
        np.testing.assert_array_equal(cpp, reference)
    del rng


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_blend_of_overlapping_constant_tiles_is_constant(backend):
    accum = np.zeros((1, 10, 10), np.float32)
    weight_sum = np.zeros((10, 10), np.float32)
    for row0, col0 in [(0, 0), (0, 4), (4, 0), (4, 4)]:
        tile = np.full((1, 6, 6), 0.25, np.float32)
        kernels.blend_tile(accum, weight_sum, tile, feather(6, 6), row0, col0, backend=backend)
    normalized = kernels.normalize_blend(accum, weight_sum, backend=backend)
    np.testing.assert_allclose(normalized, np.full_like(normalized, 0.25), rtol=1e-6)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_normalize_uncovered_is_zero(backend):
    accum = np.ones((2, 3, 3), np.float32)
    weight_sum = np.zeros((3, 3), np.float32)
    weight_sum[1, 1] = 4.0
    normalized = kernels.normalize_blend(accum, weight_sum, backend=backend)
    expected = np.zeros((2, 3, 3), np.float32)
    expected[:, 1, 1] = 0.25
    np.testing.assert_array_equal(normalized, expected)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=requires_extension), "numpy"])
def test_normalize_in_place(backend):
    accum = np.full((1, 2, 2), 3.0, np.float32)
    weight_sum = np.full((2, 2), 2.0, np.float32)
    result = kernels.normalize_blend(accum, weight_sum, out=accum, backend=backend)
    assert result is accum
    np.testing.assert_array_equal(accum, np.full((1, 2, 2), 1.5, np.float32))


def test_blend_tile_outside_rejected():
    accum = np.zeros((3, 8, 8), np.float32)
    weight_sum = np.zeros((8, 8), np.float32)
    tile = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="outside"):
        kernels.blend_tile(accum, weight_sum, tile, feather(4, 4), 5, 0)
    with pytest.raises(ValueError, match="outside"):
        kernels.blend_tile(accum, weight_sum, tile, feather(4, 4), 0, -1)


def test_blend_weight_shape_rejected():
    accum = np.zeros((3, 8, 8), np.float32)
    weight_sum = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="weight must have shape"):
        kernels.blend_tile(accum, weight_sum, np.zeros((3, 4, 4), np.float32), feather(4, 5), 0, 0)


# ---------------------------------------------------------------------------------
# float16 conversions of the C++ kernels


@requires_extension
def test_half_to_float_all_values():
    from fmsr_infer import _ext

    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    got = _ext.half_bits_to_float(halves)
    expected = halves.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))


@requires_extension
def test_float_to_half_rounds_like_numpy():
    from fmsr_infer import _ext

    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = halves[np.isfinite(halves)].astype(np.float64)
    finite.sort()
    midpoints = (finite[:-1] + finite[1:]) / 2  # exact ties, float32-representable
    rng = np.random.default_rng(7)
    random_bits = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    specials = [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        65504.0,
        65519.996,
        65520.0,
        2.0**-24,
        2.0**-25,
        2.0**-14,
    ]
    values = np.concatenate(
        [
            finite.astype(np.float32),
            midpoints.astype(np.float32),
            np.nextafter(midpoints.astype(np.float32), np.float32(np.inf)),
            random_bits.view(np.float32),
            np.array(specials, np.float32),
        ]
    )
    got = _ext.float_to_half_bits(values)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got.view(np.float16)), nan)
    np.testing.assert_array_equal(got[~nan], expected[~nan].view(np.uint16))


# ---------------------------------------------------------------------------------
# Backend selection


def test_fallback_warns_once_and_uses_numpy(monkeypatch, caplog):
    import fmsr_infer

    monkeypatch.setattr(kernels, "_extension", kernels._UNLOADED)
    # Both make `from fmsr_infer import _ext` fail even when the module is built.
    monkeypatch.setitem(sys.modules, "fmsr_infer._ext", None)
    monkeypatch.delattr(fmsr_infer, "_ext", raising=False)
    x = np.zeros((1, 2, 2), np.float32)
    with caplog.at_level(logging.WARNING, logger="fmsr_infer.kernels"):
        kernels.euler_step(x, np.ones_like(x), 0.5)
        kernels.euler_step(x, np.ones_like(x), 0.5)
    warnings = [r for r in caplog.records if r.name == "fmsr_infer.kernels"]
    assert len(warnings) == 1
    assert "fall back to numpy" in warnings[0].getMessage()
    np.testing.assert_array_equal(x, np.ones_like(x))
    assert not kernels.extension_available()


def test_cpp_backend_without_extension_raises(monkeypatch):
    monkeypatch.setattr(kernels, "_extension", None)
    with pytest.raises(RuntimeError, match="not built"):
        kernels.gaussian_noise(0, 1, 2, 2, backend="cpp")


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="backend"):
        kernels.gaussian_noise(0, 1, 2, 2, backend="cuda")
