// Host-side f16 / bf16 storage types and their conversions (round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

namespace attn {

/// IEEE 754 binary16, stored as its bits.
struct half_t {
  std::uint16_t bits;
};
/// bfloat16 (the upper half of an f32), stored as its bits.
struct bfloat16_t {
  std::uint16_t bits;
};

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(bfloat16_t x) { return bits_float(std::uint32_t(x.bits) << 16); }

inline bfloat16_t to_bfloat16(float f) {
  std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {std::uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {std::uint16_t(u >> 16)};
}

inline float to_float(half_t x) {
  const std::uint32_t sign = std::uint32_t(x.bits & 0x8000u) << 16;
  std::uint32_t exp = (x.bits >> 10) & 0x1fu;
  std::uint32_t man = x.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_float(sign);
    // Subnormal: value = man * 2^-24.
    float v = float(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline half_t to_half(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {std::uint16_t(sign | 0x7e00u)};   // NaN
  if (a >= 0x477ff000u) return {std::uint16_t(sign | 0x7c00u)};  // rounds to inf
  if (a < 0x38800000u) {
    // Result is subnormal or zero: round a * 2^24 to an integer (nearest even).
    const float v = bits_float(a) * 16777216.0f;
    std::uint32_t r = std::uint32_t(v);
    const float frac = v - float(r);
    if (frac > 0.5f || (frac == 0.5f && (r & 1u))) ++r;
    return {std::uint16_t(sign | r)};
  }
  std::uint32_t m = a + 0xc8000fffu + ((a >> 13) & 1u);  // rebias exponent (-112 << 23) and round
  return {std::uint16_t(sign | (m >> 13))};
}

/// Rounds an f32 value through the storage type `T` and back.
inline float round_to_f16(float f) { return to_float(to_half(f)); }
inline float round_to_bf16(float f) { return to_float(to_bfloat16(f)); }

}  // namespace attn
