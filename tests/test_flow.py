import numpy as np
import pytest
import torch

from fmsr_infer import flow
from fmsr_infer.samplers import euler, heun, uniform_grid


def test_path_endpoints():
    x_0 = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
    x_1 = np.random.default_rng(1).normal(size=(2, 3, 4, 4))
    assert np.array_equal(flow.interpolate(x_0, x_1, 0.0), x_0)
    assert np.array_equal(flow.interpolate(x_0, x_1, 1.0), x_1)
    np.testing.assert_allclose(flow.interpolate(x_0, x_1, 0.25), 0.75 * x_0 + 0.25 * x_1)


def test_path_velocity_is_derivative():
    x_0 = np.random.default_rng(0).normal(size=(5,))
    x_1 = np.random.default_rng(1).normal(size=(5,))
    eps = 1e-6
    numeric = (flow.interpolate(x_0, x_1, 0.5 + eps) - flow.interpolate(x_0, x_1, 0.5)) / eps
    np.testing.assert_allclose(numeric, flow.target_velocity(x_0, x_1), atol=1e-6)


def test_velocity_from_exact_x1_matches_target():
    x_0 = torch.randn(3, 3, 4, 4)
    x_1 = torch.randn(3, 3, 4, 4)
    t = torch.tensor([0.0, 0.3, 0.9])[:, None, None, None]
    x_t = flow.interpolate(x_0, x_1, t)
    v = flow.velocity_from_x1(x_1, x_t, t, t_floor=0.05)
    torch.testing.assert_close(v, flow.target_velocity(x_0, x_1), atol=1e-5, rtol=1e-5)


def test_velocity_from_x1_floors_time():
    v = flow.velocity_from_x1(np.ones(2), np.zeros(2), 1.0, t_floor=0.1)
    np.testing.assert_allclose(v, 10.0)


@pytest.mark.parametrize("target", ["image", "residual"])
def test_data_mapping_roundtrip(target):
    image = np.random.default_rng(0).uniform(-1, 1, size=(3, 8, 8))
    cond = np.random.default_rng(1).uniform(-1, 1, size=(3, 8, 8))
    x_1 = flow.data_from_image(image, cond, target, 4.0)
    np.testing.assert_allclose(flow.image_from_data(x_1, cond, target, 4.0), image)


def test_unknown_target_rejected():
    with pytest.raises(ValueError, match="unknown flow target"):
        flow.data_from_image(np.zeros(1), np.zeros(1), "noise", 1.0)


def test_euler_exact_on_constant_field():
    x, calls = euler(lambda x, t: np.full_like(x, 2.5), np.zeros(3), uniform_grid(7))
    np.testing.assert_allclose(x, 2.5, rtol=1e-12)
    assert calls == 7


def test_euler_recovers_straight_path():
    # For the straight path's true velocity field, Euler lands on x_1 with any steps.
    x_1 = np.array([0.3, -0.7])

    def velocity(x, t):
        return (x_1 - x) / (1 - t)

    x, _ = euler(velocity, np.array([1.0, 2.0]), uniform_grid(3))
    np.testing.assert_allclose(x, x_1, atol=1e-12)


def test_heun_exact_on_linear_field():
    # dx/dt = a + b t integrates to x0 + a + b/2 over [0, 1].
    x, calls = heun(lambda x, t: np.full_like(x, 1.5 + 3.0 * t), np.zeros(2), uniform_grid(4))
    np.testing.assert_allclose(x, 1.5 + 1.5, rtol=1e-12)
    assert calls == 8


def test_heun_without_last_correction_counts_calls():
    _, calls = heun(lambda x, t: x, np.ones(1), uniform_grid(4), last_correction=False)
    assert calls == 7


def _error(sampler, steps):
    # dx/dt = cos(3t) x, exact x(1) = exp(sin(3) / 3).
    x, _ = sampler(lambda x, t: np.cos(3 * t) * x, np.ones(1), uniform_grid(steps))
    return abs(float(x[0]) - np.exp(np.sin(3.0) / 3.0))


def test_heun_second_order():
    ratio = _error(heun, 64) / _error(heun, 128)
    assert 3.5 < ratio < 4.5


def test_euler_first_order():
    ratio = _error(euler, 64) / _error(euler, 128)
    assert 1.8 < ratio < 2.2


def test_samplers_run_on_torch_tensors():
    x, _ = heun(lambda x, t: torch.ones_like(x) * t, torch.zeros(2), uniform_grid(2))
    torch.testing.assert_close(x, torch.full((2,), 0.5))
