// Counter-based Gaussian noise shared by the CPU and CUDA kernels.
//
// The value at (seed, channel, row, col) is Philox4x32-10 (Salmon et al., SC 2011, the
// Random123 constants) on counter (col, row, channel, 0) and key (seed low, seed high),
// followed by Box-Muller on the first two output words in double precision:
// z = sqrt(-2 ln U1) cos(2 pi U2), U1 = (u1 + 1) / 2^32, U2 = u2 / 2^32, rounded to
// float. ln and cos use only +, -, *, / and bit manipulation, with the constants and the
// operation order of fmsr_infer/noise.py, so numpy, C++ and CUDA agree bit for bit as
// long as nothing fuses a multiply and an add (build with -ffp-contract=off and nvcc
// --fmad=false).
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define FMSR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FMSR_HOST_DEVICE inline
#endif

namespace fmsr {
namespace noise {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

FMSR_HOST_DEVICE uint64_t double_to_bits(double value) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(value));
#else
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

FMSR_HOST_DEVICE double bits_to_double(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

// Philox4x32-10 on counter (c0, c1, c2, c3), returning the first two output words,
// which are all that Box-Muller consumes.
FMSR_HOST_DEVICE void philox4x32_10_first2(uint32_t c0, uint32_t c1, uint32_t c2,
                                           uint32_t c3, uint32_t k0, uint32_t k1,
                                           uint32_t* out0, uint32_t* out1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint64_t product0 = static_cast<uint64_t>(c0) * kPhiloxM0;
    const uint64_t product1 = static_cast<uint64_t>(c2) * kPhiloxM1;
    const uint32_t hi0 = static_cast<uint32_t>(product0 >> 32);
    const uint32_t lo0 = static_cast<uint32_t>(product0);
    const uint32_t hi1 = static_cast<uint32_t>(product1 >> 32);
    const uint32_t lo1 = static_cast<uint32_t>(product1);
    const uint32_t next0 = hi1 ^ c1 ^ k0;
    const uint32_t next2 = hi0 ^ c3 ^ k1;
    c0 = next0;
    c1 = lo1;
    c2 = next2;
    c3 = lo0;
  }
  *out0 = c0;
  *out1 = c1;
}

// Exact conversion of an integer below 2^52 to double: place it in the mantissa of
// 2^52 and subtract 2^52. Unlike a cast, this vectorizes on SSE2 and AVX2.
FMSR_HOST_DEVICE double small_uint_to_double(uint64_t value) {
  return bits_to_double(0x4330000000000000ull | value) - 0x1p52;
}

// ln((u1 + 1) / 2^32) from +, -, *, / only. Hex literals keep the constants exact.
FMSR_HOST_DEVICE double log_uniform(uint32_t u1) {
  const double u = (small_uint_to_double(u1) + 1.0) * 0x1p-32;  // exact

  // u = mantissa * 2^exponent with mantissa in [sqrt(1/2), sqrt(2)).
  const uint64_t bits = double_to_bits(u);
  double exponent = small_uint_to_double(bits >> 52) - 1023.0;
  double mantissa =
      bits_to_double((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
  const bool large = mantissa > 0x1.6a09e667f3bcdp+0;
  mantissa = large ? mantissa * 0.5 : mantissa;
  exponent = large ? exponent + 1.0 : exponent;

  // ln(mantissa) = 2 atanh(s) = 2 s sum_k s^(2k) / (2k + 1), |s| <= 0.1716.
  const double s = (mantissa - 1.0) / (mantissa + 1.0);
  const double s2 = s * s;
  double series = 0x1.8618618618618p-5;  // 1/21
  series = series * s2 + 0x1.af286bca1af28p-5;  // 1/19
  series = series * s2 + 0x1.e1e1e1e1e1e1ep-5;  // 1/17
  series = series * s2 + 0x1.1111111111111p-4;  // 1/15
  series = series * s2 + 0x1.3b13b13b13b14p-4;  // 1/13
  series = series * s2 + 0x1.745d1745d1746p-4;  // 1/11
  series = series * s2 + 0x1.c71c71c71c71cp-4;  // 1/9
  series = series * s2 + 0x1.2492492492492p-3;  // 1/7
  series = series * s2 + 0x1.999999999999ap-3;  // 1/5
  series = series * s2 + 0x1.5555555555555p-2;  // 1/3
  series = series * s2 + 1.0;
  return exponent * 0x1.62e42fee00000p-1 +
         (exponent * 0x1.a39ef35793c76p-33 + 2.0 * s * series);
}

// cos(2 pi u2 / 2^32): exact quadrant reduction on the integer, then a fold of the
// quadrant onto [0, pi/4] by symmetry, then Taylor series for cos and sin.
FMSR_HOST_DEVICE double cos_turns(uint32_t u2) {
  const uint32_t quadrant = u2 >> 30;
  const uint32_t position = u2 & 0x3FFFFFFFu;  // angle (pi/2) * position / 2^30
  const bool folded = position > 0x20000000u;
  const uint32_t reduced = folded ? 0x40000000u - position : position;
  const double angle = small_uint_to_double(reduced) * 0x1p-30 * 0x1.921fb54442d18p+0;

  const double angle2 = angle * angle;
  double cos_angle = 0x1.ae7f3e733b81fp-45;
  cos_angle = cos_angle * angle2 + -0x1.93974a8c07c9dp-37;
  cos_angle = cos_angle * angle2 + 0x1.1eed8eff8d898p-29;
  cos_angle = cos_angle * angle2 + -0x1.27e4fb7789f5cp-22;
  cos_angle = cos_angle * angle2 + 0x1.a01a01a01a01ap-16;
  cos_angle = cos_angle * angle2 + -0x1.6c16c16c16c17p-10;
  cos_angle = cos_angle * angle2 + 0x1.5555555555555p-5;
  cos_angle = cos_angle * angle2 + -0x1.0000000000000p-1;
  cos_angle = cos_angle * angle2 + 0x1.0000000000000p+0;
  double sin_series = 0x1.952c77030ad4ap-49;
  sin_series = sin_series * angle2 + -0x1.ae7f3e733b81fp-41;
  sin_series = sin_series * angle2 + 0x1.6124613a86d09p-33;
  sin_series = sin_series * angle2 + -0x1.ae64567f544e4p-26;
  sin_series = sin_series * angle2 + 0x1.71de3a556c734p-19;
  sin_series = sin_series * angle2 + -0x1.a01a01a01a01ap-13;
  sin_series = sin_series * angle2 + 0x1.1111111111111p-7;
  sin_series = sin_series * angle2 + -0x1.5555555555555p-3;
  sin_series = sin_series * angle2 + 0x1.0000000000000p+0;
  const double sin_angle = angle * sin_series;

  const double cos_position = folded ? sin_angle : cos_angle;
  const double sin_position = folded ? cos_angle : sin_angle;
  if (quadrant == 0) return cos_position;
  if (quadrant == 1) return -sin_position;
  if (quadrant == 2) return -cos_position;
  return sin_position;
}

// The noise value at (channel, row, col) of the field with key (key0, key1).
FMSR_HOST_DEVICE float gaussian_at(uint32_t key0, uint32_t key1, uint32_t channel,
                                   uint32_t row, uint32_t col) {
  uint32_t u1, u2;
  philox4x32_10_first2(col, row, channel, 0u, key0, key1, &u1, &u2);
#if defined(__CUDA_ARCH__)
  const double radius = __dsqrt_rn(-2.0 * log_uniform(u1));
#else
  const double radius = std::sqrt(-2.0 * log_uniform(u1));
#endif
  return static_cast<float>(radius * cos_turns(u2));
}

}  // namespace noise
}  // namespace fmsr
