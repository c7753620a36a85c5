// CPU kernels of the fmsr runtime on raw, C-contiguous buffers. The bindings in
// cpu_module.cpp validate shapes and dtypes before calling these, so nothing here checks
// bounds beyond what the comments state.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fmsr {
namespace cpu {

using fmsr::DType;

// Writes the tile [row0, row0 + height) x [col0, col0 + width) of the noise field of
// each seed into out, float [batch, channels, height, width].
void gaussian_noise(float* out, const uint64_t* seeds, int64_t batch, int64_t channels,
                    int64_t height, int64_t width, int64_t row0, int64_t col0);

// One axis of a separable resampling: for output position i (of `length`, already
// offset to the tile), out[i] = sum_p weights[i * taps + p] * in[indices[i * taps + p]].
struct ResampleTable {
  const float* weights;
  const int32_t* indices;
  int64_t length;
  int64_t taps;
};

// Resamples lr, interleaved [batch, in_h, in_w, channels] of uint8, uint16 or float32
// (scaled to [0, 1] by 255, 65535 or 1), rows first, into out, planar
// [batch, channels, rows.length, cols.length] float32 or float16 in network units 2v - 1.
// Every index must lie in [0, in_h) for rows and [0, in_w) for columns.
void upsample(const void* lr, DType lr_type, int64_t batch, int64_t in_h, int64_t in_w,
              int64_t channels, const ResampleTable& rows, const ResampleTable& cols,
              void* out, DType out_type);

// ODE state updates over n elements. The states (x, x_pred, x_mid) are float32. The
// network outputs (v, v_pred, x1, x1_pred, x1_mid) are float32 or float16, as given by
// net_type.
void euler_step(float* x, const void* v, DType net_type, int64_t n, float dt);
void heun_predict(const float* x, const void* v, DType net_type, float* x_pred,
                  int64_t n, float dt);
void heun_correct(float* x, const void* v, const void* v_pred, DType net_type, int64_t n,
                  float half_dt);
void euler_step_x1(float* x, const void* x1, DType net_type, int64_t n, float scale);
void heun_predict_x1(const float* x, const void* x1, DType net_type, float* x_pred,
                     int64_t n, float scale);
void heun_correct_x1(float* x, const void* x1, const float* x_pred, const void* x1_pred,
                     DType net_type, int64_t n, float half_dt, float rate, float rate_next);
// The midpoint method's full step from the x1 prediction x1_mid made at x_mid:
// x += scale * (x1_mid - x_mid).
void midpoint_step_x1(float* x, const float* x_mid, const void* x1_mid, DType net_type,
                      int64_t n, float scale);

// Maps the state x, planar [batch, channels, height, width] float32 in network units,
// to an interleaved [batch, height, width, channels] uint8 or uint16 image. With
// upsample != nullptr (float32 or float16, x's shape) the image is upsample + x / scale.
void state_to_image(const float* x, const void* upsample, DType upsample_type,
                    int64_t batch, int64_t channels, int64_t height, int64_t width,
                    float residual_scale, void* out, DType out_type);

// Adds tile [channels, tile_h, tile_w] times weight [tile_h, tile_w] into accum
// [channels, height, width] and weight into weight_sum [height, width], at (row0, col0).
// The tile must lie inside the accumulator.
void blend_tile(float* accum, float* weight_sum, int64_t channels, int64_t height,
                int64_t width, const void* tile, DType tile_type, const float* weight,
                int64_t tile_h, int64_t tile_w, int64_t row0, int64_t col0);

// out = accum / weight_sum where weight_sum > 0, else 0. out may alias accum.
void normalize_blend(const float* accum, const float* weight_sum, float* out,
                     int64_t channels, int64_t height, int64_t width);

// Elementwise float16 conversions, exposed for testing against numpy.
void float_to_half_array(const float* in, uint16_t* out, int64_t n);
void half_to_float_array(const uint16_t* in, float* out, int64_t n);

}  // namespace cpu
}  // namespace fmsr
