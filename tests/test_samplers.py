"""Samplers and time grids: exact answers, orders of accuracy and true call counts."""

import math

import numpy as np
import pytest

from fmsr_infer.samplers import (
    CALLS_PER_INTERVAL,
    GRIDS,
    SAMPLERS,
    euler,
    get_sampler,
    heun,
    heun_euler_last,
    make_grid,
    midpoint,
    network_calls,
    rk4,
    shifted_grid,
    steps_for_calls,
    uniform_grid,
)

ALL_GRIDS = [("uniform", None), ("shifted", 3.0), ("shifted", 0.25), ("image_end", None)]


class CountingField:
    """A velocity field that records every call, to check the reported counts."""

    def __init__(self, field):
        self.field = field
        self.times: list[float] = []

    def __call__(self, x, t):
        assert isinstance(t, float), f"velocity got time {t!r} of type {type(t).__name__}"
        self.times.append(t)
        return self.field(x, t)


# ---------------------------------------------------------------------------------------
# Exact answers


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("grid, shift", ALL_GRIDS)
def test_sampler_exact_on_constant_field(name, grid, shift):
    x, _ = SAMPLERS[name](lambda x, t: np.full_like(x, 2.5), np.ones(3), make_grid(grid, 5, shift))
    np.testing.assert_allclose(x, 3.5, rtol=1e-13)


@pytest.mark.parametrize("sampler", [heun, midpoint, rk4])
@pytest.mark.parametrize("grid, shift", ALL_GRIDS)
def test_second_order_exact_on_linear_field(sampler, grid, shift):
    # dx/dt = a + b t integrates to x_0 + a + b / 2 over [0, 1].
    times = make_grid(grid, 3, shift)
    x, _ = sampler(lambda x, t: np.full_like(x, 1.5 + 3.0 * t), np.zeros(2), times)
    np.testing.assert_allclose(x, 1.5 + 1.5, rtol=1e-13)


def test_euler_inexact_on_linear_field():
    x, _ = euler(lambda x, t: np.full_like(x, 3.0 * t), np.zeros(1), uniform_grid(4))
    np.testing.assert_allclose(x, 3.0 * (0 + 0.25 + 0.5 + 0.75) / 4)


def test_heun_euler_last_inexact_on_linear_field():
    # The last interval [0.5, 1] is an Euler step: 0.5 · 3 · 0.5 instead of 0.5 · 3 · 0.75.
    x, _ = heun_euler_last(lambda x, t: np.full_like(x, 3.0 * t), np.zeros(1), uniform_grid(2))
    np.testing.assert_allclose(x, 0.375 + 0.75)


@pytest.mark.parametrize("grid, shift", ALL_GRIDS)
def test_rk4_exact_on_cubic_field(grid, shift):
    # dx/dt = 1 - 2t + 6t² + 4t³ integrates to x_0 + 1 - 1 + 2 + 1 over [0, 1].
    def field(x, t):
        return np.full_like(x, 1 - 2 * t + 6 * t**2 + 4 * t**3)

    x, _ = rk4(field, np.full(2, 0.5), make_grid(grid, 3, shift))
    np.testing.assert_allclose(x, 3.5, rtol=1e-13)


def test_rk4_inexact_on_quartic_field():
    x, _ = rk4(lambda x, t: np.full_like(x, 5 * t**4), np.zeros(1), uniform_grid(1))
    assert abs(float(x[0]) - 1.0) > 1e-3


# Heun and RK4 evaluate the field at t = 1, where (x_1 - x) / (1 - t) is undefined.
@pytest.mark.parametrize("name", ["euler", "heun_euler_last", "midpoint"])
def test_sampler_recovers_straight_path(name):
    # The straight path's true velocity (x_1 - x) / (1 - t) is constant along the path,
    # so these samplers land on x_1 with any number of steps.
    x_1 = np.array([0.3, -0.7])
    x_0 = np.array([1.0, 2.0])
    x, _ = SAMPLERS[name](lambda x, t: (x_1 - x) / (1 - t), x_0, uniform_grid(3))
    np.testing.assert_allclose(x, x_1, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Orders of accuracy


def _smooth_field(x, t):
    return -x * x + np.cos(2 * t)


def _error(sampler, steps):
    # dx/dt = -x² + cos(2t) from x(0) = 0.5, nonlinear and time-dependent so that no
    # error term cancels. The reference is RK4 on 4096 intervals, exact to rounding.
    reference, _ = rk4(_smooth_field, np.full(1, 0.5), uniform_grid(4096))
    x, _ = sampler(_smooth_field, np.full(1, 0.5), uniform_grid(steps))
    return abs(float(x[0]) - float(reference[0]))


@pytest.mark.parametrize(
    "sampler, steps, low, high",
    [
        (euler, 16, 1.8, 2.2),
        (heun, 16, 3.6, 4.6),
        (heun_euler_last, 16, 3.6, 4.6),
        (midpoint, 16, 3.6, 4.6),
        (rk4, 8, 14.0, 18.0),
    ],
    ids=["euler", "heun", "heun_euler_last", "midpoint", "rk4"],
)
def test_sampler_order_on_smooth_field(sampler, steps, low, high):
    # Halving the interval divides the error by 2^order.
    ratio = _error(sampler, steps) / _error(sampler, 2 * steps)
    assert low < ratio < high


def test_rk4_more_accurate_than_heun_per_call():
    assert _error(rk4, 4) < _error(heun, 8)


# ---------------------------------------------------------------------------------------
# Network calls


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_reported_calls_are_true(name, steps):
    field = CountingField(lambda x, t: -x)
    _, calls = SAMPLERS[name](field, np.ones(2), uniform_grid(steps))
    assert calls == len(field.times)
    assert calls == network_calls(name, steps)


def test_call_formula_per_sampler():
    assert [network_calls(name, 4) for name in SAMPLERS] == [4, 8, 7, 8, 16]


def test_samplers_evaluate_within_grid():
    for name in SAMPLERS:
        field = CountingField(lambda x, t: x)
        SAMPLERS[name](field, np.ones(1), shifted_grid(3, 2.0))
        assert min(field.times) == 0.0, name
        assert max(field.times) <= 1.0, name


def test_heun_euler_last_skips_end_time():
    field = CountingField(lambda x, t: x)
    heun_euler_last(field, np.ones(1), uniform_grid(2))
    assert field.times == [0.0, 0.5, 0.5]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_steps_for_calls_inverts_formula(name):
    for steps in range(1, 9):
        assert steps_for_calls(name, network_calls(name, steps)) == steps


def test_steps_for_calls_infeasible():
    assert steps_for_calls("rk4", 6) is None
    assert steps_for_calls("heun", 3) is None
    assert steps_for_calls("heun_euler_last", 4) is None
    assert steps_for_calls("euler", 0) is None


def test_call_table_covers_registry():
    assert set(CALLS_PER_INTERVAL) == set(SAMPLERS)


def test_samplers_have_no_hidden_state():
    field = lambda x, t: np.sin(x + t)  # noqa: E731
    for name in SAMPLERS:
        first = SAMPLERS[name](field, np.ones(3), uniform_grid(4))
        second = SAMPLERS[name](field, np.ones(3), uniform_grid(4))
        assert np.array_equal(first[0], second[0]), name
        assert first[1] == second[1], name


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_runs_on_torch_tensors(name):
    torch = pytest.importorskip("torch")
    x, _ = SAMPLERS[name](lambda x, t: torch.ones_like(x) * t, torch.zeros(2), uniform_grid(2))
    assert isinstance(x, torch.Tensor)
    assert x.dtype == torch.float32
    # The integral of t over [0, 1] is 0.5, which Euler and the Euler last step miss.
    expected = {"euler": 0.25, "heun_euler_last": 0.375}.get(name, 0.5)
    torch.testing.assert_close(x, torch.full((2,), expected))


# ---------------------------------------------------------------------------------------
# Grids and lookups


@pytest.mark.parametrize("grid, shift", ALL_GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 7, 16])
def test_grid_monotone_from_zero_to_one(grid, shift, steps):
    times = make_grid(grid, steps, shift)
    assert len(times) == steps + 1
    assert times[0] == 0.0
    assert times[-1] == 1.0
    assert all(a < b for a, b in zip(times[:-1], times[1:]))


def test_shifted_grid_formula():
    np.testing.assert_allclose(shifted_grid(2, 3.0), [0.0, 0.25, 1.0])
    np.testing.assert_allclose(shifted_grid(4, 1.0), uniform_grid(4))


def test_shift_moves_steps_toward_noise():
    assert make_grid("shifted", 8, 3.0)[4] < 0.5 < make_grid("shifted", 8, 1 / 3)[4]


def test_image_end_grid_denser_near_image():
    times = make_grid("image_end", 4)
    np.testing.assert_allclose(times, [0.0, 0.4375, 0.75, 0.9375, 1.0])
    widths = np.diff(times)
    assert all(a > b for a, b in zip(widths[:-1], widths[1:]))


def test_make_grid_default_shift():
    assert make_grid("shifted", 4) == shifted_grid(4, 3.0)


@pytest.mark.parametrize("shift", [0.0, -1.0, math.inf, math.nan])
def test_shift_rejects_invalid(shift):
    with pytest.raises(ValueError, match="shift must be a positive finite number"):
        make_grid("shifted", 4, shift)


def test_shift_rejected_for_other_grids():
    with pytest.raises(ValueError, match="applies only to the 'shifted' grid"):
        make_grid("uniform", 4, 2.0)


def test_grid_rejects_zero_steps():
    for name in GRIDS:
        with pytest.raises(ValueError, match="steps must be at least 1"):
            make_grid(name, 0)


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match="unknown time grid 'cosine'"):
        make_grid("cosine", 4)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        get_sampler("dpm")


def test_sampler_rejects_single_time():
    with pytest.raises(ValueError, match="at least 2 times"):
        euler(lambda x, t: x, np.ones(1), [0.0])


def test_registry_prints_names():
    assert repr(SAMPLERS) == "('euler', 'heun', 'heun_euler_last', 'midpoint', 'rk4')"
    assert get_sampler("heun") is heun
