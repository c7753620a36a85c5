// CPU kernels of the fmsr runtime: OpenMP over rows, with inner loops over contiguous
// memory written so that GCC and Clang vectorize them (build with -fopt-info-vec to see
// which do). Built with -ffp-contract=off, so every float result equals the numpy
// reference's sequence of IEEE operations.
#include "cpu_kernels.h"

#include <algorithm>
#include <vector>

#include "half.h"
#include "noise_math.h"

namespace fmsr {
namespace cpu {
namespace {

// Below this many elements a parallel region costs more than it saves: the memory-bound
// loops run at several elements per nanosecond, and waking a team of threads costs
// microseconds, or a scheduler tick when the cores are busy.
constexpr int64_t kParallelMinElements = int64_t{1} << 18;
// Noise costs about a hundred double operations per element, so it pays off sooner.
constexpr int64_t kParallelMinNoise = int64_t{1} << 10;

// A float16 value by its bits, distinct from uint16 pixels.
struct Half {
  uint16_t bits;
};

inline float to_float(float value) { return value; }
inline float to_float(Half value) { return half_to_float(value.bits); }
inline float to_float(uint8_t value) { return static_cast<float>(value); }
inline float to_float(uint16_t value) { return static_cast<float>(value); }

inline void store(float* dst, float value) { *dst = value; }
inline void store(Half* dst, float value) { dst->bits = float_to_half(value); }

// Maps network units to [0, 1], clamps (NaN becomes 0) and rounds to an integer pixel.
template <typename Pixel>
inline Pixel quantize(float value, float max_value) {
  float unit = (value + 1.0f) * 0.5f;
  unit = unit > 0.0f ? unit : 0.0f;
  unit = unit < 1.0f ? unit : 1.0f;
  // unit * max_value + 0.5 >= 0.5, so truncation equals floor.
  return static_cast<Pixel>(static_cast<int32_t>(unit * max_value + 0.5f));
}

// ---------------------------------------------------------------------------------
// Noise

// On x86-64 with GCC or Clang, the noise row is compiled twice, for AVX2 and for the
// baseline (SSE2), and the loader picks one per CPU. Noise is the one kernel bound by
// arithmetic (double precision), where twice the vector width pays. AVX2 does not
// include FMA and the build disables contraction, so both clones round identically.
// Defining FMSR_NOISE_CLONES as empty on the command line builds the baseline only.
#ifndef FMSR_NOISE_CLONES
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__APPLE__) && \
    (!defined(__clang__) || __clang_major__ >= 14)
#define FMSR_NOISE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FMSR_NOISE_CLONES
#endif
#endif

FMSR_NOISE_CLONES
void noise_row(uint32_t key0, uint32_t key1, uint32_t channel, uint32_t row,
               uint32_t first_col, int64_t width, float* dst) {
  for (int64_t j = 0; j < width; ++j) {
    dst[j] = noise::gaussian_at(key0, key1, channel, row, first_col + static_cast<uint32_t>(j));
  }
}

// ---------------------------------------------------------------------------------
// Upsample

// Network units of a pixel, (2 v - max) / max: the numerator is exact for integer
// pixels and the division rounds once, so the error stays within half an ulp.
template <typename In>
inline float to_network(In value, float max_value) {
  return (2.0f * to_float(value) - max_value) / max_value;
}

template <typename In>
void resample_rows(const In* image, int64_t row_stride, const float* weights,
                   const int32_t* indices, int64_t taps, float max_value, float* line,
                   int64_t span) {
  const In* first = image + indices[0] * row_stride;
  const float first_weight = weights[0];
  for (int64_t k = 0; k < span; ++k) {
    line[k] = first_weight * to_network(first[k], max_value);
  }
  for (int64_t p = 1; p < taps; ++p) {
    const In* source = image + indices[p] * row_stride;
    const float weight = weights[p];
    for (int64_t k = 0; k < span; ++k) {
      line[k] = line[k] + weight * to_network(source[k], max_value);
    }
  }
}

template <typename Out>
void resample_columns(const float* line, const float* weights, const int32_t* offsets,
                      int64_t length, int64_t taps, Out* dst) {
  for (int64_t x = 0; x < length; ++x) {
    float sum = 0.0f;
    for (int64_t q = 0; q < taps; ++q) {
      sum = sum + weights[x * taps + q] * line[offsets[x * taps + q]];
    }
    store(dst + x, sum);
  }
}

template <typename In, typename Out>
void upsample_impl(const In* lr, int64_t batch, int64_t in_h, int64_t in_w,
                   int64_t channels, const ResampleTable& rows, const ResampleTable& cols,
                   Out* out, float max_value) {
  if (batch == 0 || rows.length == 0 || cols.length == 0) return;

  // The row pass covers only the source columns that the tile's column taps read.
  const int64_t column_taps = cols.length * cols.taps;
  const int32_t col_min = *std::min_element(cols.indices, cols.indices + column_taps);
  const int32_t col_max = *std::max_element(cols.indices, cols.indices + column_taps);
  const int64_t span = (static_cast<int64_t>(col_max) - col_min + 1) * channels;
  // offsets[c * column_taps + i]: where column tap i of channel c sits in the line.
  std::vector<int32_t> offsets(channels * column_taps);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t i = 0; i < column_taps; ++i) {
      const int64_t offset = (cols.indices[i] - col_min) * channels + c;
      offsets[c * column_taps + i] = static_cast<int32_t>(offset);
    }
  }

  const int64_t row_stride = in_w * channels;
  const int64_t plane = rows.length * cols.length;
  const int64_t total_rows = batch * rows.length;
  const bool parallel = total_rows * cols.length * channels >= kParallelMinElements;

#pragma omp parallel if (parallel)
  {
    std::vector<float> line(span);
#pragma omp for schedule(static)
    for (int64_t index = 0; index < total_rows; ++index) {
      const int64_t n = index / rows.length;
      const int64_t y = index % rows.length;
      const In* image = lr + n * in_h * row_stride + static_cast<int64_t>(col_min) * channels;

      // Rows first: one interleaved line of the tile's source columns at output row y.
      resample_rows(image, row_stride, rows.weights + y * rows.taps,
                    rows.indices + y * rows.taps, rows.taps, max_value, line.data(),
                    span);

      // Then columns, writing one row of each planar output channel.
      for (int64_t c = 0; c < channels; ++c) {
        Out* dst = out + (n * channels + c) * plane + y * cols.length;
        resample_columns(line.data(), cols.weights, offsets.data() + c * column_taps,
                         cols.length, cols.taps, dst);
      }
    }
  }
}

template <typename In>
void upsample_to(const In* lr, int64_t batch, int64_t in_h, int64_t in_w, int64_t channels,
                 const ResampleTable& rows, const ResampleTable& cols, void* out,
                 DType out_type, float max_value) {
  if (out_type == DType::kFloat16) {
    upsample_impl(lr, batch, in_h, in_w, channels, rows, cols, static_cast<Half*>(out),
                  max_value);
  } else {
    upsample_impl(lr, batch, in_h, in_w, channels, rows, cols, static_cast<float*>(out),
                  max_value);
  }
}

// ---------------------------------------------------------------------------------
// ODE state updates

template <typename T>
void euler_step_impl(float* x, const T* v, int64_t n, float dt) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] + dt * to_float(v[i]);
}

template <typename T>
void heun_predict_impl(const float* x, const T* v, float* x_pred, int64_t n, float dt) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) x_pred[i] = x[i] + dt * to_float(v[i]);
}

template <typename T>
void heun_correct_impl(float* x, const T* v, const T* v_pred, int64_t n, float half_dt) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    x[i] = x[i] + half_dt * (to_float(v[i]) + to_float(v_pred[i]));
  }
}

template <typename T>
void euler_step_x1_impl(float* x, const T* x1, int64_t n, float scale) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] + scale * (to_float(x1[i]) - x[i]);
}

template <typename T>
void heun_predict_x1_impl(const float* x, const T* x1, float* x_pred, int64_t n,
                          float scale) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) x_pred[i] = x[i] + scale * (to_float(x1[i]) - x[i]);
}

template <typename T>
void heun_correct_x1_impl(float* x, const T* x1, const float* x_pred, const T* x1_pred,
                          int64_t n, float half_dt, float rate, float rate_next) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) {
    const float v = rate * (to_float(x1[i]) - x[i]);
    const float v_pred = rate_next * (to_float(x1_pred[i]) - x_pred[i]);
    x[i] = x[i] + half_dt * (v + v_pred);
  }
}

template <typename T>
void midpoint_step_x1_impl(float* x, const float* x_mid, const T* x1_mid, int64_t n,
                           float scale) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] + scale * (to_float(x1_mid[i]) - x_mid[i]);
}

// ---------------------------------------------------------------------------------
// Output

template <bool kResidual, typename U, typename Pixel>
void quantize_run(const float* x, const U* upsample, int64_t count, float residual_scale,
                  float max_value, Pixel* dst) {
  for (int64_t i = 0; i < count; ++i) {
    float value = x[i];
    if (kResidual) value = to_float(upsample[i]) + value / residual_scale;
    dst[i] = quantize<Pixel>(value, max_value);
  }
}

// dst[col * channels + c] = planar[c * stride + col]; the buffers never overlap.
template <int kChannels, typename Pixel>
void interleave(const Pixel* __restrict planar, int64_t width, int64_t stride,
                int64_t channels, Pixel* __restrict dst) {
  if (kChannels == 3) {
    const Pixel* __restrict red = planar;
    const Pixel* __restrict green = planar + stride;
    const Pixel* __restrict blue = planar + 2 * stride;
    for (int64_t col = 0; col < width; ++col) {
      dst[3 * col] = red[col];
      dst[3 * col + 1] = green[col];
      dst[3 * col + 2] = blue[col];
    }
    return;
  }
  for (int64_t col = 0; col < width; ++col) {
    for (int64_t c = 0; c < channels; ++c) dst[col * channels + c] = planar[c * stride + col];
  }
}

// Rows per block of state_to_image. Reading a block of rows from each plane keeps the
// reads sequential across pages. Reading one row of each plane in turn restarts the
// hardware prefetcher every row and measured several times slower at 3 x 1024 x 1024.
constexpr int64_t kImageRowBlock = 16;

// Each block of output rows is quantized one planar channel at a time (contiguous, so
// it vectorizes) into a buffer, then interleaved row by row. kChannels > 0 fixes the
// channel count at compile time for the interleave; 0 reads it from `channels`.
template <int kChannels, bool kResidual, typename U, typename Pixel>
void state_to_image_impl(const float* x, const U* upsample, int64_t batch,
                         int64_t channels, int64_t height, int64_t width,
                         float residual_scale, Pixel* out, float max_value) {
  const int64_t c_count = kChannels > 0 ? kChannels : channels;
  const int64_t plane = height * width;
  const int64_t blocks_per_image = (height + kImageRowBlock - 1) / kImageRowBlock;
  const int64_t total_blocks = batch * blocks_per_image;
  const bool parallel = batch * plane * c_count >= kParallelMinElements;
#pragma omp parallel if (parallel)
  {
    std::vector<Pixel> planar(c_count * kImageRowBlock * width);
#pragma omp for schedule(static)
    for (int64_t block = 0; block < total_blocks; ++block) {
      const int64_t n = block / blocks_per_image;
      const int64_t y0 = (block % blocks_per_image) * kImageRowBlock;
      const int64_t rows = std::min(kImageRowBlock, height - y0);
      const int64_t block_size = rows * width;
      for (int64_t c = 0; c < c_count; ++c) {
        const int64_t source = (n * c_count + c) * plane + y0 * width;
        quantize_run<kResidual>(x + source, upsample + source, block_size, residual_scale,
                                max_value, planar.data() + c * block_size);
      }
      Pixel* dst = out + (n * height + y0) * width * c_count;
      for (int64_t row = 0; row < rows; ++row) {
        interleave<kChannels>(planar.data() + row * width, width, block_size, c_count,
                              dst + row * width * c_count);
      }
    }
  }
}

template <bool kResidual, typename U, typename Pixel>
void state_to_image_channels(const float* x, const U* upsample, int64_t batch,
                             int64_t channels, int64_t height, int64_t width,
                             float residual_scale, Pixel* out, float max_value) {
  if (channels == 1) {
    state_to_image_impl<1, kResidual>(x, upsample, batch, channels, height, width,
                                      residual_scale, out, max_value);
  } else if (channels == 3) {
    state_to_image_impl<3, kResidual>(x, upsample, batch, channels, height, width,
                                      residual_scale, out, max_value);
  } else {
    state_to_image_impl<0, kResidual>(x, upsample, batch, channels, height, width,
                                      residual_scale, out, max_value);
  }
}

template <typename Pixel>
void state_to_image_to(const float* x, const void* upsample, DType upsample_type,
                       int64_t batch, int64_t channels, int64_t height, int64_t width,
                       float residual_scale, Pixel* out, float max_value) {
  if (upsample == nullptr) {
    state_to_image_channels<false>(x, x, batch, channels, height, width, residual_scale,
                                   out, max_value);
  } else if (upsample_type == DType::kFloat16) {
    state_to_image_channels<true>(x, static_cast<const Half*>(upsample), batch, channels,
                                  height, width, residual_scale, out, max_value);
  } else {
    state_to_image_channels<true>(x, static_cast<const float*>(upsample), batch,
                                  channels, height, width, residual_scale, out,
                                  max_value);
  }
}

// ---------------------------------------------------------------------------------
// Tile blend

template <typename T>
void blend_tile_impl(float* accum, float* weight_sum, int64_t channels, int64_t height,
                     int64_t width, const T* tile, const float* weight, int64_t tile_h,
                     int64_t tile_w, int64_t row0, int64_t col0) {
  const int64_t total_rows = channels * tile_h;
#pragma omp parallel for schedule(static) if (total_rows * tile_w >= kParallelMinElements)
  for (int64_t index = 0; index < total_rows; ++index) {
    const int64_t c = index / tile_h;
    const int64_t i = index % tile_h;
    float* dst = accum + (c * height + row0 + i) * width + col0;
    const T* src = tile + index * tile_w;
    const float* w = weight + i * tile_w;
    for (int64_t j = 0; j < tile_w; ++j) dst[j] = dst[j] + to_float(src[j]) * w[j];
  }

#pragma omp parallel for schedule(static) if (tile_h * tile_w >= kParallelMinElements)
  for (int64_t i = 0; i < tile_h; ++i) {
    float* dst = weight_sum + (row0 + i) * width + col0;
    const float* w = weight + i * tile_w;
    for (int64_t j = 0; j < tile_w; ++j) dst[j] = dst[j] + w[j];
  }
}

}  // namespace

void gaussian_noise(float* out, const uint64_t* seeds, int64_t batch, int64_t channels,
                    int64_t height, int64_t width, int64_t row0, int64_t col0) {
  const int64_t total_rows = batch * channels * height;
  // Conversions to uint32 wrap modulo 2^32, which is the counter's definition.
  const uint32_t first_col = static_cast<uint32_t>(col0);
#pragma omp parallel for schedule(static) if (total_rows * width >= kParallelMinNoise)
  for (int64_t index = 0; index < total_rows; ++index) {
    const int64_t n = index / (channels * height);
    const uint32_t channel = static_cast<uint32_t>((index / height) % channels);
    const uint32_t row = static_cast<uint32_t>(row0 + index % height);
    noise_row(static_cast<uint32_t>(seeds[n]), static_cast<uint32_t>(seeds[n] >> 32), channel,
              row, first_col, width, out + index * width);
  }
}

void upsample(const void* lr, DType lr_type, int64_t batch, int64_t in_h, int64_t in_w,
              int64_t channels, const ResampleTable& rows, const ResampleTable& cols,
              void* out, DType out_type) {
  switch (lr_type) {
    case DType::kUint8:
      upsample_to(static_cast<const uint8_t*>(lr), batch, in_h, in_w, channels, rows,
                  cols, out, out_type, 255.0f);
      break;
    case DType::kUint16:
      upsample_to(static_cast<const uint16_t*>(lr), batch, in_h, in_w, channels, rows,
                  cols, out, out_type, 65535.0f);
      break;
    default:
      upsample_to(static_cast<const float*>(lr), batch, in_h, in_w, channels, rows, cols,
                  out, out_type, 1.0f);
      break;
  }
}

void euler_step(float* x, const void* v, DType net_type, int64_t n, float dt) {
  if (net_type == DType::kFloat16) {
    euler_step_impl(x, static_cast<const Half*>(v), n, dt);
  } else {
    euler_step_impl(x, static_cast<const float*>(v), n, dt);
  }
}

void heun_predict(const float* x, const void* v, DType net_type, float* x_pred,
                  int64_t n, float dt) {
  if (net_type == DType::kFloat16) {
    heun_predict_impl(x, static_cast<const Half*>(v), x_pred, n, dt);
  } else {
    heun_predict_impl(x, static_cast<const float*>(v), x_pred, n, dt);
  }
}

void heun_correct(float* x, const void* v, const void* v_pred, DType net_type, int64_t n,
                  float half_dt) {
  if (net_type == DType::kFloat16) {
    heun_correct_impl(x, static_cast<const Half*>(v), static_cast<const Half*>(v_pred), n,
                      half_dt);
  } else {
    heun_correct_impl(x, static_cast<const float*>(v), static_cast<const float*>(v_pred),
                      n, half_dt);
  }
}

void euler_step_x1(float* x, const void* x1, DType net_type, int64_t n, float scale) {
  if (net_type == DType::kFloat16) {
    euler_step_x1_impl(x, static_cast<const Half*>(x1), n, scale);
  } else {
    euler_step_x1_impl(x, static_cast<const float*>(x1), n, scale);
  }
}

void heun_predict_x1(const float* x, const void* x1, DType net_type, float* x_pred,
                     int64_t n, float scale) {
  if (net_type == DType::kFloat16) {
    heun_predict_x1_impl(x, static_cast<const Half*>(x1), x_pred, n, scale);
  } else {
    heun_predict_x1_impl(x, static_cast<const float*>(x1), x_pred, n, scale);
  }
}

void heun_correct_x1(float* x, const void* x1, const float* x_pred, const void* x1_pred,
                     DType net_type, int64_t n, float half_dt, float rate,
                     float rate_next) {
  if (net_type == DType::kFloat16) {
    heun_correct_x1_impl(x, static_cast<const Half*>(x1), x_pred,
                         static_cast<const Half*>(x1_pred), n, half_dt, rate, rate_next);
  } else {
    heun_correct_x1_impl(x, static_cast<const float*>(x1), x_pred,
                         static_cast<const float*>(x1_pred), n, half_dt, rate, rate_next);
  }
}

void midpoint_step_x1(float* x, const float* x_mid, const void* x1_mid, DType net_type,
                      int64_t n, float scale) {
  if (net_type == DType::kFloat16) {
    midpoint_step_x1_impl(x, x_mid, static_cast<const Half*>(x1_mid), n, scale);
  } else {
    midpoint_step_x1_impl(x, x_mid, static_cast<const float*>(x1_mid), n, scale);
  }
}

void state_to_image(const float* x, const void* upsample, DType upsample_type,
                    int64_t batch, int64_t channels, int64_t height, int64_t width,
                    float residual_scale, void* out, DType out_type) {
  if (out_type == DType::kUint16) {
    state_to_image_to(x, upsample, upsample_type, batch, channels, height, width,
                      residual_scale, static_cast<uint16_t*>(out), 65535.0f);
  } else {
    state_to_image_to(x, upsample, upsample_type, batch, channels, height, width,
                      residual_scale, static_cast<uint8_t*>(out), 255.0f);
  }
}

void blend_tile(float* accum, float* weight_sum, int64_t channels, int64_t height,
                int64_t width, const void* tile, DType tile_type, const float* weight,
                int64_t tile_h, int64_t tile_w, int64_t row0, int64_t col0) {
  if (tile_type == DType::kFloat16) {
    blend_tile_impl(accum, weight_sum, channels, height, width,
                    static_cast<const Half*>(tile), weight, tile_h, tile_w, row0, col0);
  } else {
    blend_tile_impl(accum, weight_sum, channels, height, width,
                    static_cast<const float*>(tile), weight, tile_h, tile_w, row0, col0);
  }
}

void normalize_blend(const float* accum, const float* weight_sum, float* out,
                     int64_t channels, int64_t height, int64_t width) {
  const int64_t total_rows = channels * height;
#pragma omp parallel for schedule(static) if (total_rows * width >= kParallelMinElements)
  for (int64_t index = 0; index < total_rows; ++index) {
    const float* sums = weight_sum + (index % height) * width;
    const float* src = accum + index * width;
    float* dst = out + index * width;
    for (int64_t x = 0; x < width; ++x) {
      const float sum = sums[x];
      // Dividing unconditionally keeps the loop branch-free; the select drops 0 / 0.
      const float quotient = src[x] / (sum > 0.0f ? sum : 1.0f);
      dst[x] = sum > 0.0f ? quotient : 0.0f;
    }
  }
}

void float_to_half_array(const float* in, uint16_t* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_half(in[i]);
}

void half_to_float_array(const uint16_t* in, float* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMinElements)
  for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(in[i]);
}

}  // namespace cpu
}  // namespace fmsr
