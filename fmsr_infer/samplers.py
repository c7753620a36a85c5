"""ODE samplers over an explicit time grid, one signature, no hidden state.

Each sampler integrates dx/dt = velocity(x, t) from time_grid[0] to time_grid[-1]
(t = 0 noise, t = 1 image; see `fmsr_infer.flow`) and returns the final state and the
number of network calls it made. They use only arithmetic on the state, so they run
on numpy arrays (the runtime) and torch tensors (the trainer's evaluation) alike.

`velocity(x, t)` takes the state and a float time and returns the velocity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

SAMPLERS = ("euler", "heun")


def uniform_grid(steps: int) -> list[float]:
    """Return steps + 1 evenly spaced times from 0 to 1."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [i / steps for i in range(steps + 1)]


def euler(velocity: Callable, x, time_grid: Sequence[float]):
    """Integrate with Euler steps: one network call per interval."""
    calls = 0
    for t_cur, t_next in zip(time_grid[:-1], time_grid[1:]):
        x = x + (t_next - t_cur) * velocity(x, t_cur)
        calls += 1
    return x, calls


def heun(velocity: Callable, x, time_grid: Sequence[float], last_correction: bool = True):
    """Integrate with Heun's second-order method: two network calls per interval.

    With `last_correction=False` the last interval is a plain Euler step, saving one
    call where the velocity at t = 1 is least reliable.
    """
    calls = 0
    intervals = list(zip(time_grid[:-1], time_grid[1:]))
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


def get_sampler(name: str) -> Callable:
    if name == "euler":
        return euler
    if name == "heun":
        return heun
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
