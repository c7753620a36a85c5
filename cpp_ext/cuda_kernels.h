// Host launchers of the CUDA kernels (cuda_kernels.cu), declared without CUDA headers so
// that the pybind11 binding compiles with the host compiler alone.
//
// Every pointer is a device pointer on the calling thread's current device, and
// `stream` is a cudaStream_t (nullptr is the legacy default stream). Each launcher
// enqueues one kernel without waiting for it and returns the cudaError_t of the launch,
// 0 on success. Errors of the kernel itself surface at the next synchronizing call. The
// layouts and the arithmetic equal those of the CPU kernels in cpu_kernels.h.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fmsr {
namespace cuda {

// Returns the message of a cudaError_t value.
const char* error_string(int error);

int gaussian_noise(float* out, uint64_t seed, int64_t channels, int64_t height,
                   int64_t width, int64_t row0, int64_t col0, void* stream);

// lr is [batch, in_h, in_w, channels]. The tables start at the tile's first output row
// and column: row_weights and row_indices are [out_h, row_taps], col_weights and
// col_indices [out_w, col_taps]. Indices outside the image are clamped to its edge.
// That only guards memory, since valid tables never need it.
int upsample(const void* lr, DType lr_type, int64_t batch, int64_t in_h, int64_t in_w,
             int64_t channels, const float* row_weights, const int32_t* row_indices,
             int64_t row_taps, const float* col_weights, const int32_t* col_indices,
             int64_t col_taps, int64_t out_h, int64_t out_w, void* out, DType out_type,
             void* stream);

int euler_step(float* x, const void* v, DType net_type, int64_t n, float dt, void* stream);
int heun_predict(const float* x, const void* v, DType net_type, float* x_pred, int64_t n,
                 float dt, void* stream);
int heun_correct(float* x, const void* v, const void* v_pred, DType net_type, int64_t n,
                 float half_dt, void* stream);
int euler_step_x1(float* x, const void* x1, DType net_type, int64_t n, float scale,
                  void* stream);
int heun_predict_x1(const float* x, const void* x1, DType net_type, float* x_pred,
                    int64_t n, float scale, void* stream);
int heun_correct_x1(float* x, const void* x1, const float* x_pred, const void* x1_pred,
                    DType net_type, int64_t n, float half_dt, float rate, float rate_next,
                    void* stream);
int midpoint_step_x1(float* x, const float* x_mid, const void* x1_mid, DType net_type,
                     int64_t n, float scale, void* stream);

int state_to_image(const float* x, const void* upsample, DType upsample_type,
                   int64_t batch, int64_t channels, int64_t height, int64_t width,
                   float residual_scale, void* out, DType out_type, void* stream);

int blend_tile(float* accum, float* weight_sum, int64_t channels, int64_t height,
               int64_t width, const void* tile, DType tile_type, const float* weight,
               int64_t tile_h, int64_t tile_w, int64_t row0, int64_t col0, void* stream);
int normalize_blend(const float* accum, const float* weight_sum, float* out,
                    int64_t channels, int64_t height, int64_t width, void* stream);

}  // namespace cuda
}  // namespace fmsr
