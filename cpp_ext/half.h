// IEEE 754 binary16 conversions for the CPU kernels, written branch-free so that the
// loops calling them vectorize. Both match numpy's float16 casts: float_to_half rounds
// to nearest even, overflows to infinity and maps every NaN to the quiet NaN 0x7e00
// (numpy keeps NaN payload bits, so only NaN-ness is comparable).
#pragma once

#include <cstdint>
#include <cstring>

namespace fmsr {

inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline float half_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  const uint32_t magnitude = half & 0x7FFFu;

  // Normal numbers: shift the exponent and mantissa into place and rebias 15 -> 127.
  // Infinity and NaN (exponent 31) need exponent 255, one more rebias step.
  const uint32_t normal = (magnitude << 13) + 0x38000000u;
  const uint32_t special = normal + 0x38000000u;
  uint32_t bits = magnitude >= 0x7C00u ? special : normal;

  // Subnormals and zero: the value is magnitude * 2^-24, exact in float.
  const float subnormal = static_cast<float>(static_cast<int32_t>(magnitude)) * 0x1p-24f;
  bits = magnitude < 0x0400u ? float_to_bits(subnormal) : bits;
  return bits_to_float(bits | sign);
}

inline uint16_t float_to_half(float value) {
  const uint32_t bits = float_to_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7FFFFFFFu;

  // Normal halves (|value| >= 2^-14): rebias 127 -> 15, then round the 13 dropped bits
  // to nearest even by adding 0xfff plus the lowest kept bit. A carry out of the
  // mantissa bumps the exponent, which also turns values >= 65520 into infinity.
  const uint32_t lowest_kept = (magnitude >> 13) & 1u;
  const uint32_t normal = (magnitude - 0x38000000u + 0x0FFFu + lowest_kept) >> 13;

  // Subnormal halves: adding 0.5f puts the value's 2^-24 quanta in the low mantissa
  // bits of the sum, and the float addition does the round to nearest even.
  const float shifted = bits_to_float(magnitude) + 0.5f;
  const uint32_t subnormal = float_to_bits(shifted) - 0x3F000000u;

  uint32_t result = magnitude < 0x38800000u ? subnormal : normal;
  result = magnitude >= 0x477FF000u ? 0x7C00u : result;
  result = magnitude > 0x7F800000u ? 0x7E00u : result;
  return static_cast<uint16_t>(result | sign);
}

}  // namespace fmsr
