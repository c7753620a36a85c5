// Scalar coefficients of the fused ODE updates, computed in double and rounded to float
// once per call. The CPU and CUDA bindings and the numpy reference in
// fmsr_infer/kernels.py derive them with the same formulas, so the per-element float
// arithmetic gets identical inputs on every backend.
#pragma once

#include <algorithm>

namespace fmsr {

// Heun corrector weight 0.5 * dt.
inline float heun_half_step(double dt) { return static_cast<float>(0.5 * dt); }

// 1 / max(1 - t, floor): turns an x1 prediction into a velocity, v = (x1 - x) * rate.
inline float x1_rate(double t, double floor) {
  return static_cast<float>(1.0 / std::max(1.0 - t, floor));
}

// dt / max(1 - t, floor): the Euler step on an x1 prediction, x += scale * (x1 - x).
inline float x1_step_scale(double t, double dt, double floor) {
  return static_cast<float>(dt / std::max(1.0 - t, floor));
}

// dt / max(1 - t_mid, floor) with t_mid = t + 0.5 * dt: the midpoint method's full step
// from the x1 prediction at its midpoint, x += scale * (x1_mid - x_mid).
inline float midpoint_step_scale(double t, double dt, double floor) {
  return x1_step_scale(t + 0.5 * dt, dt, floor);
}

}  // namespace fmsr
