"""The straight flow path of fmsr, written down once for trainer and runtime.

Time convention: t = 0 is Gaussian noise, t = 1 is the image.

    x_t = (1 - t) · x_0 + t · x_1,    x_0 ~ N(0, T² · I),    velocity = x_1 - x_0

Here x_1 is what the flow transports noise to: the HR image in network units [-1, 1]
(target "image"), or the scaled difference between the HR image and the bicubic
upsample of its LR (target "residual"). T is the sampling temperature, 1 in training.
The network predicts either the velocity or x_1 itself ("prediction"); for the latter
the velocity follows from the path as (x̂_1 - x_t) / (1 - t), with 1 - t floored.

The functions work on numpy arrays and torch tensors alike; t may be a float or an
array that broadcasts against the state.
"""

from __future__ import annotations

TARGETS = ("image", "residual")
PREDICTIONS = ("velocity", "x1")


def interpolate(x_0, x_1, t):
    """Return the state x_t on the straight path between noise x_0 and data x_1."""
    return (1 - t) * x_0 + t * x_1


def target_velocity(x_0, x_1):
    """Return the velocity of the straight path, constant in t."""
    return x_1 - x_0


def velocity_from_x1(x1_hat, x_t, t, t_floor: float):
    """Derive the velocity from a prediction of x_1, flooring 1 - t at `t_floor`."""
    one_minus_t = 1 - t
    if hasattr(one_minus_t, "clamp"):
        one_minus_t = one_minus_t.clamp(min=t_floor)
    elif hasattr(one_minus_t, "shape"):
        import numpy as np

        one_minus_t = np.maximum(one_minus_t, t_floor)
    else:
        one_minus_t = max(one_minus_t, t_floor)
    return (x1_hat - x_t) / one_minus_t


def data_from_image(image, cond, target: str, residual_scale: float):
    """Map an HR image in network units to the flow's data x_1."""
    if target == "image":
        return image
    if target == "residual":
        return (image - cond) * residual_scale
    raise ValueError(f"unknown flow target {target!r}; expected one of {TARGETS}")


def image_from_data(x_1, cond, target: str, residual_scale: float):
    """Map the flow's data x_1 back to an image in network units (inverse of above)."""
    if target == "image":
        return x_1
    if target == "residual":
        return cond + x_1 / residual_scale
    raise ValueError(f"unknown flow target {target!r}; expected one of {TARGETS}")


def to_network(image01):
    """Map an image in [0, 1] to network units [-1, 1]."""
    return image01 * 2 - 1


def from_network(x):
    """Map network units [-1, 1] to [0, 1] (unclamped)."""
    return (x + 1) * 0.5
