// CUDA kernels of the fmsr runtime, the device versions of cpu_kernels.cpp with the
// same layouts and the same float operations in the same order. Compile with
// --fmad=false (cpp_ext/build.py does): the noise is then bit-exact against the numpy
// reference, and the other kernels round like the CPU ones.
//
// Launch shape: x threads walk the innermost (contiguous) axis and a grid-stride loop
// over blockIdx.y walks the rows of all planes, so each warp reads and writes contiguous
// memory. The elementwise updates use a flat grid-stride loop instead.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_kernels.h"
#include "noise_math.h"

namespace fmsr {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxElementwiseBlocks = int64_t{1} << 16;

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(uint8_t value) { return static_cast<float>(value); }
__device__ __forceinline__ float to_float(uint16_t value) { return static_cast<float>(value); }

__device__ __forceinline__ void store(float* dst, float value) { *dst = value; }
__device__ __forceinline__ void store(__half* dst, float value) { *dst = __float2half_rn(value); }

template <typename In>
__device__ __forceinline__ float to_network(In value, float max_value) {
  return (2.0f * to_float(value) - max_value) / max_value;
}

template <typename Pixel>
__device__ __forceinline__ Pixel quantize(float value, float max_value) {
  float unit = (value + 1.0f) * 0.5f;
  unit = unit > 0.0f ? unit : 0.0f;  // NaN becomes 0
  unit = unit < 1.0f ? unit : 1.0f;
  return static_cast<Pixel>(static_cast<int32_t>(unit * max_value + 0.5f));
}

__device__ __forceinline__ int64_t clamp_index(int32_t index, int64_t length) {
  return index < 0 ? 0 : (index >= length ? length - 1 : index);
}

// A grid whose x threads cover `width` and whose y blocks stride over `lines`.
dim3 line_grid(int64_t width, int64_t lines) {
  const int64_t blocks_x = (width + kThreads - 1) / kThreads;
  return dim3(static_cast<unsigned>(blocks_x),
              static_cast<unsigned>(std::min(lines, kMaxGridY)));
}

dim3 elementwise_grid(int64_t n) {
  return dim3(static_cast<unsigned>(
      std::min((n + kThreads - 1) / kThreads, kMaxElementwiseBlocks)));
}

int launch_status() { return static_cast<int>(cudaGetLastError()); }

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// ---------------------------------------------------------------------------------
// Kernels

__global__ void gaussian_noise_kernel(float* out, uint32_t key0, uint32_t key1,
                                      int64_t height, int64_t width, int64_t lines,
                                      uint32_t row0, uint32_t col0) {
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= width) return;
  for (int64_t line = blockIdx.y; line < lines; line += gridDim.y) {
    const uint32_t channel = static_cast<uint32_t>(line / height);
    const uint32_t row = row0 + static_cast<uint32_t>(line % height);
    out[line * width + col] = noise::gaussian_at(key0, key1, channel, row,
                                                 col0 + static_cast<uint32_t>(col));
  }
}

template <typename In, typename Out>
__global__ void upsample_kernel(const In* lr, int64_t in_h, int64_t in_w, int64_t channels,
                                const float* row_weights, const int32_t* row_indices,
                                int64_t row_taps, const float* col_weights,
                                const int32_t* col_indices, int64_t col_taps,
                                int64_t out_h, int64_t out_w, int64_t lines, Out* out,
                                float max_value) {
  const int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (x >= out_w) return;
  for (int64_t line = blockIdx.y; line < lines; line += gridDim.y) {
    const int64_t n = line / out_h;
    const int64_t y = line % out_h;
    const In* image = lr + n * in_h * in_w * channels;
    for (int64_t c = 0; c < channels; ++c) {
      // Rows first at each source column of the tap, then columns, like the CPU.
      float sum = 0.0f;
      for (int64_t q = 0; q < col_taps; ++q) {
        const int64_t col = clamp_index(col_indices[x * col_taps + q], in_w);
        float by_rows = 0.0f;
        for (int64_t p = 0; p < row_taps; ++p) {
          const int64_t row = clamp_index(row_indices[y * row_taps + p], in_h);
          const float term = row_weights[y * row_taps + p] *
                             to_network(image[(row * in_w + col) * channels + c], max_value);
          by_rows = p == 0 ? term : by_rows + term;
        }
        sum = sum + col_weights[x * col_taps + q] * by_rows;
      }
      store(out + ((n * channels + c) * out_h + y) * out_w + x, sum);
    }
  }
}

#define FMSR_ELEMENTWISE_LOOP(i, n)                                                   \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T>
__global__ void euler_step_kernel(float* x, const T* v, int64_t n, float dt) {
  FMSR_ELEMENTWISE_LOOP(i, n) { x[i] = x[i] + dt * to_float(v[i]); }
}

template <typename T>
__global__ void heun_predict_kernel(const float* x, const T* v, float* x_pred, int64_t n,
                                    float dt) {
  FMSR_ELEMENTWISE_LOOP(i, n) { x_pred[i] = x[i] + dt * to_float(v[i]); }
}

template <typename T>
__global__ void heun_correct_kernel(float* x, const T* v, const T* v_pred, int64_t n,
                                    float half_dt) {
  FMSR_ELEMENTWISE_LOOP(i, n) {
    x[i] = x[i] + half_dt * (to_float(v[i]) + to_float(v_pred[i]));
  }
}

template <typename T>
__global__ void euler_step_x1_kernel(float* x, const T* x1, int64_t n, float scale) {
  FMSR_ELEMENTWISE_LOOP(i, n) { x[i] = x[i] + scale * (to_float(x1[i]) - x[i]); }
}

template <typename T>
__global__ void heun_predict_x1_kernel(const float* x, const T* x1, float* x_pred,
                                       int64_t n, float scale) {
  FMSR_ELEMENTWISE_LOOP(i, n) { x_pred[i] = x[i] + scale * (to_float(x1[i]) - x[i]); }
}

template <typename T>
__global__ void heun_correct_x1_kernel(float* x, const T* x1, const float* x_pred,
                                       const T* x1_pred, int64_t n, float half_dt,
                                       float rate, float rate_next) {
  FMSR_ELEMENTWISE_LOOP(i, n) {
    const float v = rate * (to_float(x1[i]) - x[i]);
    const float v_pred = rate_next * (to_float(x1_pred[i]) - x_pred[i]);
    x[i] = x[i] + half_dt * (v + v_pred);
  }
}

template <typename T>
__global__ void midpoint_step_x1_kernel(float* x, const float* x_mid, const T* x1_mid,
                                        int64_t n, float scale) {
  FMSR_ELEMENTWISE_LOOP(i, n) { x[i] = x[i] + scale * (to_float(x1_mid[i]) - x_mid[i]); }
}

#undef FMSR_ELEMENTWISE_LOOP

template <bool kResidual, typename U, typename Pixel>
__global__ void state_to_image_kernel(const float* x, const U* upsample, int64_t channels,
                                      int64_t height, int64_t width, int64_t lines,
                                      float residual_scale, Pixel* out, float max_value) {
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= width) return;
  const int64_t plane = height * width;
  for (int64_t line = blockIdx.y; line < lines; line += gridDim.y) {
    const int64_t n = line / height;
    const int64_t y = line % height;
    const int64_t source = n * channels * plane + y * width + col;
    Pixel* dst = out + (line * width + col) * channels;
    for (int64_t c = 0; c < channels; ++c) {
      float value = x[source + c * plane];
      if (kResidual) value = to_float(upsample[source + c * plane]) + value / residual_scale;
      dst[c] = quantize<Pixel>(value, max_value);
    }
  }
}

template <typename T>
__global__ void blend_tile_kernel(float* accum, float* weight_sum, int64_t height,
                                  int64_t width, const T* tile, const float* weight,
                                  int64_t tile_h, int64_t tile_w, int64_t lines,
                                  int64_t row0, int64_t col0) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= tile_w) return;
  for (int64_t line = blockIdx.y; line < lines; line += gridDim.y) {
    const int64_t c = line / tile_h;
    const int64_t i = line % tile_h;
    const float w = weight[i * tile_w + j];
    const int64_t target = (row0 + i) * width + col0 + j;
    accum[c * height * width + target] =
        accum[c * height * width + target] + to_float(tile[line * tile_w + j]) * w;
    // Channel 0 owns the weight sum, so each element has exactly one writer.
    if (c == 0) weight_sum[target] = weight_sum[target] + w;
  }
}

__global__ void normalize_blend_kernel(const float* accum, const float* weight_sum,
                                       float* out, int64_t height, int64_t width,
                                       int64_t lines) {
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= width) return;
  for (int64_t line = blockIdx.y; line < lines; line += gridDim.y) {
    const float sum = weight_sum[(line % height) * width + col];
    const int64_t index = line * width + col;
    const float quotient = accum[index] / (sum > 0.0f ? sum : 1.0f);
    out[index] = sum > 0.0f ? quotient : 0.0f;
  }
}

// ---------------------------------------------------------------------------------
// Type dispatch

template <typename In>
int launch_upsample(const In* lr, int64_t batch, int64_t in_h, int64_t in_w,
                    int64_t channels, const float* row_weights, const int32_t* row_indices,
                    int64_t row_taps, const float* col_weights, const int32_t* col_indices,
                    int64_t col_taps, int64_t out_h, int64_t out_w, void* out,
                    DType out_type, float max_value, cudaStream_t stream) {
  const int64_t lines = batch * out_h;
  const dim3 grid = line_grid(out_w, lines);
  if (out_type == DType::kFloat16) {
    upsample_kernel<<<grid, kThreads, 0, stream>>>(
        lr, in_h, in_w, channels, row_weights, row_indices, row_taps, col_weights,
        col_indices, col_taps, out_h, out_w, lines, static_cast<__half*>(out), max_value);
  } else {
    upsample_kernel<<<grid, kThreads, 0, stream>>>(
        lr, in_h, in_w, channels, row_weights, row_indices, row_taps, col_weights,
        col_indices, col_taps, out_h, out_w, lines, static_cast<float*>(out), max_value);
  }
  return launch_status();
}

template <typename Pixel>
int launch_state_to_image(const float* x, const void* upsample, DType upsample_type,
                          int64_t batch, int64_t channels, int64_t height, int64_t width,
                          float residual_scale, Pixel* out, float max_value,
                          cudaStream_t stream) {
  const int64_t lines = batch * height;
  const dim3 grid = line_grid(width, lines);
  if (upsample == nullptr) {
    state_to_image_kernel<false><<<grid, kThreads, 0, stream>>>(
        x, x, channels, height, width, lines, residual_scale, out, max_value);
  } else if (upsample_type == DType::kFloat16) {
    state_to_image_kernel<true><<<grid, kThreads, 0, stream>>>(
        x, static_cast<const __half*>(upsample), channels, height, width, lines,
        residual_scale, out, max_value);
  } else {
    state_to_image_kernel<true><<<grid, kThreads, 0, stream>>>(
        x, static_cast<const float*>(upsample), channels, height, width, lines,
        residual_scale, out, max_value);
  }
  return launch_status();
}

}  // namespace

const char* error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

int gaussian_noise(float* out, uint64_t seed, int64_t channels, int64_t height,
                   int64_t width, int64_t row0, int64_t col0, void* stream) {
  const int64_t lines = channels * height;
  if (lines == 0 || width == 0) return 0;
  gaussian_noise_kernel<<<line_grid(width, lines), kThreads, 0, as_stream(stream)>>>(
      out, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), height, width,
      lines, static_cast<uint32_t>(row0), static_cast<uint32_t>(col0));
  return launch_status();
}

int upsample(const void* lr, DType lr_type, int64_t batch, int64_t in_h, int64_t in_w,
             int64_t channels, const float* row_weights, const int32_t* row_indices,
             int64_t row_taps, const float* col_weights, const int32_t* col_indices,
             int64_t col_taps, int64_t out_h, int64_t out_w, void* out, DType out_type,
             void* stream) {
  if (batch == 0 || out_h == 0 || out_w == 0 || channels == 0) return 0;
  const cudaStream_t s = as_stream(stream);
  switch (lr_type) {
    case DType::kUint8:
      return launch_upsample(static_cast<const uint8_t*>(lr), batch, in_h, in_w, channels,
                             row_weights, row_indices, row_taps, col_weights, col_indices,
                             col_taps, out_h, out_w, out, out_type, 255.0f, s);
    case DType::kUint16:
      return launch_upsample(static_cast<const uint16_t*>(lr), batch, in_h, in_w, channels,
                             row_weights, row_indices, row_taps, col_weights, col_indices,
                             col_taps, out_h, out_w, out, out_type, 65535.0f, s);
    default:
      return launch_upsample(static_cast<const float*>(lr), batch, in_h, in_w, channels,
                             row_weights, row_indices, row_taps, col_weights, col_indices,
                             col_taps, out_h, out_w, out, out_type, 1.0f, s);
  }
}

int euler_step(float* x, const void* v, DType net_type, int64_t n, float dt, void* stream) {
  if (n == 0) return 0;
  const dim3 grid = elementwise_grid(n);
  if (net_type == DType::kFloat16) {
    euler_step_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const __half*>(v), n, dt);
  } else {
    euler_step_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const float*>(v), n, dt);
  }
  return launch_status();
}

int heun_predict(const float* x, const void* v, DType net_type, float* x_pred, int64_t n,
                 float dt, void* stream) {
  if (n == 0) return 0;
  const dim3 grid = elementwise_grid(n);
  if (net_type == DType::kFloat16) {
    heun_predict_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const __half*>(v), x_pred, n, dt);
  } else {
    heun_predict_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const float*>(v), x_pred, n, dt);
  }
  return launch_status();
}

int heun_correct(float* x, const void* v, const void* v_pred, DType net_type, int64_t n,
                 float half_dt, void* stream) {
  if (n == 0) return 0;
  const dim3 grid = elementwise_grid(n);
  if (net_type == DType::kFloat16) {
    heun_correct_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const __half*>(v), static_cast<const __half*>(v_pred), n, half_dt);
  } else {
    heun_correct_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const float*>(v), static_cast<const float*>(v_pred), n, half_dt);
  }
  return launch_status();
}

int euler_step_x1(float* x, const void* x1, DType net_type, int64_t n, float scale,
                  void* stream) {
  if (n == 0) return 0;
  const dim3 grid = elementwise_grid(n);
  if (net_type == DType::kFloat16) {
    euler_step_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const __half*>(x1), n, scale);
  } else {
    euler_step_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const float*>(x1), n, scale);
  }
  return launch_status();
}

int heun_predict_x1(const float* x, const void* x1, DType net_type, float* x_pred,
                    int64_t n, float scale, void* stream) {
  if (n == 0) return 0;
  const dim3 grid = elementwise_grid(n);
  if (net_type == DType::kFloat16) {
    heun_predict_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const __half*>(x1), x_pred, n, scale);
  } else {
    heun_predict_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const float*>(x1), x_pred, n, scale);
  }
  return launch_status();
}

int heun_correct_x1(float* x, const void* x1, const float* x_pred, const void* x1_pred,
                    DType net_type, int64_t n, float half_dt, float rate, float rate_next,
                    void* stream) {
  if (n == 0) return 0;
  const dim3 grid = elementwise_grid(n);
  if (net_type == DType::kFloat16) {
    heun_correct_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const __half*>(x1), x_pred, static_cast<const __half*>(x1_pred), n,
        half_dt, rate, rate_next);
  } else {
    heun_correct_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, static_cast<const float*>(x1), x_pred, static_cast<const float*>(x1_pred), n,
        half_dt, rate, rate_next);
  }
  return launch_status();
}

int midpoint_step_x1(float* x, const float* x_mid, const void* x1_mid, DType net_type,
                     int64_t n, float scale, void* stream) {
  if (n == 0) return 0;
  const dim3 grid = elementwise_grid(n);
  if (net_type == DType::kFloat16) {
    midpoint_step_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, x_mid, static_cast<const __half*>(x1_mid), n, scale);
  } else {
    midpoint_step_x1_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        x, x_mid, static_cast<const float*>(x1_mid), n, scale);
  }
  return launch_status();
}

int state_to_image(const float* x, const void* upsample, DType upsample_type,
                   int64_t batch, int64_t channels, int64_t height, int64_t width,
                   float residual_scale, void* out, DType out_type, void* stream) {
  if (batch == 0 || height == 0 || width == 0 || channels == 0) return 0;
  const cudaStream_t s = as_stream(stream);
  if (out_type == DType::kUint16) {
    return launch_state_to_image(x, upsample, upsample_type, batch, channels, height, width,
                                 residual_scale, static_cast<uint16_t*>(out), 65535.0f, s);
  }
  return launch_state_to_image(x, upsample, upsample_type, batch, channels, height, width,
                               residual_scale, static_cast<uint8_t*>(out), 255.0f, s);
}

int blend_tile(float* accum, float* weight_sum, int64_t channels, int64_t height,
               int64_t width, const void* tile, DType tile_type, const float* weight,
               int64_t tile_h, int64_t tile_w, int64_t row0, int64_t col0, void* stream) {
  const int64_t lines = channels * tile_h;
  if (lines == 0 || tile_w == 0) return 0;
  const dim3 grid = line_grid(tile_w, lines);
  if (tile_type == DType::kFloat16) {
    blend_tile_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        accum, weight_sum, height, width, static_cast<const __half*>(tile), weight, tile_h,
        tile_w, lines, row0, col0);
  } else {
    blend_tile_kernel<<<grid, kThreads, 0, as_stream(stream)>>>(
        accum, weight_sum, height, width, static_cast<const float*>(tile), weight, tile_h,
        tile_w, lines, row0, col0);
  }
  return launch_status();
}

int normalize_blend(const float* accum, const float* weight_sum, float* out,
                    int64_t channels, int64_t height, int64_t width, void* stream) {
  const int64_t lines = channels * height;
  if (lines == 0 || width == 0) return 0;
  normalize_blend_kernel<<<line_grid(width, lines), kThreads, 0, as_stream(stream)>>>(
      accum, weight_sum, out, height, width, lines);
  return launch_status();
}

}  // namespace cuda
}  // namespace fmsr
