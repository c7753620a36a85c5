"""ODE samplers and time grids: one signature, an explicit grid, no hidden state.

Each sampler integrates dx/dt = velocity(x, t) from time_grid[0] to time_grid[-1]
(t = 0 noise, t = 1 image; see `fmsr_infer.flow`) and returns the final state and the
number of network calls it made:

    sampler(velocity, x, time_grid) -> (x, calls)

`velocity(x, t)` takes the state and a Python float time and returns the velocity.
The samplers use only +, - and * on the state, so they run on numpy arrays (the
runtime) and torch tensors (the trainer's evaluation) alike.

Steps: fmsr's `steps` (the `--steps` option, `SampleSettings.steps`, the `x4_s{steps}`
in output names and `steps_default` in the model metadata) counts intervals of the
time grid, as EDM and k-diffusion count steps. The network calls per interval depend
on the sampler (`CALLS_PER_INTERVAL`), and `network_calls` converts.

Grids (`make_grid`) all start at exactly 0.0 and end at exactly 1.0 and increase
strictly:
- "uniform": t_i = i / N.
- "shifted": t'_i = t_i / (t_i + s · (1 - t_i)) applied to the uniform grid. s > 1
  spends more of the steps near the noise end (the resolution shift of Stable
  Diffusion 3, written for t = 0 noise), s < 1 near the image end, s = 1 is uniform.
- "image_end": t_i = 1 - (1 - i / N)², intervals shrinking linearly toward the image
  end t = 1, where fine detail forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Velocity = Callable[[Any, float], Any]
Sampler = Callable[[Velocity, Any, Sequence[float]], tuple[Any, int]]

DEFAULT_SHIFT = 3.0


class _Registry(dict):
    """A name-to-function mapping that prints as its names, for help and error messages."""

    def __repr__(self) -> str:
        return repr(tuple(self))


def _intervals(time_grid: Sequence[float]) -> list[tuple[float, float]]:
    if len(time_grid) < 2:
        raise ValueError(f"a time grid needs at least 2 times, got {list(time_grid)}")
    times = [float(t) for t in time_grid]
    return list(zip(times[:-1], times[1:]))


# ---------------------------------------------------------------------------------------
# Samplers


def euler(velocity: Velocity, x, time_grid: Sequence[float]):
    """Integrate with Euler steps: one network call per interval, first order."""
    calls = 0
    for t_cur, t_next in _intervals(time_grid):
        x = x + (t_next - t_cur) * velocity(x, t_cur)
        calls += 1
    return x, calls


def heun(velocity: Velocity, x, time_grid: Sequence[float], last_correction: bool = True):
    """Integrate with Heun's second-order method: two network calls per interval.

    With `last_correction=False` the last interval is a plain Euler step (2N - 1 calls
    for N intervals, as in EDM's sampler), which skips the velocity at the grid's end
    t = 1, where an x_1-predicting network divides by the floored 1 - t.
    """
    calls = 0
    intervals = _intervals(time_grid)
    for i, (t_cur, t_next) in enumerate(intervals):
        dt = t_next - t_cur

        # Euler predictor.
        d_cur = velocity(x, t_cur)
        calls += 1
        x_pred = x + dt * d_cur
        if i == len(intervals) - 1 and not last_correction:
            x = x_pred
            continue

        # Trapezoidal corrector.
        d_next = velocity(x_pred, t_next)
        calls += 1
        x = x + 0.5 * dt * (d_cur + d_next)
    return x, calls


def heun_euler_last(velocity: Velocity, x, time_grid: Sequence[float]):
    """Integrate with Heun steps and a plain Euler last step: 2N - 1 calls, second order."""
    return heun(velocity, x, time_grid, last_correction=False)


def midpoint(velocity: Velocity, x, time_grid: Sequence[float]):
    """Integrate with the explicit midpoint method: two network calls per interval."""
    calls = 0
    for t_cur, t_next in _intervals(time_grid):
        dt = t_next - t_cur

        # Half an Euler step to the interval's midpoint.
        d_cur = velocity(x, t_cur)
        x_mid = x + 0.5 * dt * d_cur

        # Full step with the midpoint's velocity.
        x = x + dt * velocity(x_mid, t_cur + 0.5 * dt)
        calls += 2
    return x, calls


def rk4(velocity: Velocity, x, time_grid: Sequence[float]):
    """Integrate with the classical fourth-order Runge-Kutta method: four calls per interval."""
    calls = 0
    for t_cur, t_next in _intervals(time_grid):
        dt = t_next - t_cur
        t_mid = t_cur + 0.5 * dt

        # Four stages: the start, the midpoint twice, the end.
        k1 = velocity(x, t_cur)
        k2 = velocity(x + 0.5 * dt * k1, t_mid)
        k3 = velocity(x + 0.5 * dt * k2, t_mid)
        k4 = velocity(x + dt * k3, t_next)
        calls += 4

        # Simpson's weights.
        x = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x, calls


SAMPLERS: dict[str, Sampler] = _Registry(
    euler=euler,
    heun=heun,
    heun_euler_last=heun_euler_last,
    midpoint=midpoint,
    rk4=rk4,
)

# Network calls of each sampler on N intervals: calls = a · N + b, stored as (a, b).
CALLS_PER_INTERVAL: dict[str, tuple[int, int]] = {
    "euler": (1, 0),
    "heun": (2, 0),
    "heun_euler_last": (2, -1),
    "midpoint": (2, 0),
    "rk4": (4, 0),
}


def get_sampler(name: str) -> Sampler:
    """Look up a sampler by its name in `SAMPLERS`."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {tuple(SAMPLERS)}") from None


def network_calls(sampler: str, steps: int) -> int:
    """Return the network calls that `sampler` makes on a grid of `steps` intervals."""
    get_sampler(sampler)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    per_interval, offset = CALLS_PER_INTERVAL[sampler]
    return per_interval * steps + offset


def steps_for_calls(sampler: str, calls: int) -> int | None:
    """Return the intervals at which `sampler` makes exactly `calls` calls, or None if none."""
    get_sampler(sampler)
    per_interval, offset = CALLS_PER_INTERVAL[sampler]
    steps, remainder = divmod(calls - offset, per_interval)
    if remainder or steps < 1:
        return None
    return steps


# ---------------------------------------------------------------------------------------
# Time grids


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def uniform_grid(steps: int) -> list[float]:
    """Return steps + 1 evenly spaced times from 0 to 1."""
    _check_steps(steps)
    return [i / steps for i in range(steps + 1)]


def shifted_grid(steps: int, shift: float = DEFAULT_SHIFT) -> list[float]:
    """Return the uniform grid mapped by t / (t + shift · (1 - t)).

    shift > 1 makes the grid denser near the noise end t = 0, shift < 1 near the image.
    """
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive finite number, got {shift}")
    return [t / (t + shift * (1 - t)) for t in uniform_grid(steps)]


def image_end_grid(steps: int) -> list[float]:
    """Return times 1 - (1 - i / steps)², denser toward the image end t = 1."""
    return [1 - (1 - u) ** 2 for u in uniform_grid(steps)]


GRIDS: dict[str, Callable[..., list[float]]] = _Registry(
    uniform=uniform_grid,
    shifted=shifted_grid,
    image_end=image_end_grid,
)


def make_grid(name: str, steps: int, shift: float | None = None) -> list[float]:
    """Build the grid `name` with `steps` intervals.

    `shift` applies to the "shifted" grid only (default `DEFAULT_SHIFT`). Passing it
    with another grid raises ValueError rather than being ignored.
    """
    if name not in GRIDS:
        raise ValueError(f"unknown time grid {name!r}; expected one of {tuple(GRIDS)}")
    if name == "shifted":
        return shifted_grid(steps, DEFAULT_SHIFT if shift is None else shift)
    if shift is not None:
        raise ValueError(f"shift applies only to the 'shifted' grid, not to {name!r}")
    return GRIDS[name](steps)
