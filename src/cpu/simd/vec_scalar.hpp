// The scalar "vector": one float per lane, plain C++ and libm. The reference point for the
// SIMD variants and the fallback on CPUs without AVX2. Same interface as vec_avx2.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "attn/half.hpp"

namespace attn::cpu::scalar {

struct Vec {
  static constexpr int width = 1;
  float v;

  static Vec zero() { return {0.0f}; }
  static Vec set1(float x) { return {x}; }
  static Vec load(const float* p) { return {*p}; }
  static Vec load(const half_t* p) { return {to_float(*p)}; }
  static Vec load(const bfloat16_t* p) { return {to_float(*p)}; }
  /// First n lanes from p, the rest zero (n < width never happens for width 1).
  template <class T>
  static Vec load_n(const T* p, int n) {
    return n > 0 ? load(p) : zero();
  }
  void store(float* p) const { *p = v; }
  void store(half_t* p) const { *p = to_half(v); }
  void store(bfloat16_t* p) const { *p = to_bfloat16(v); }
  template <class T>
  void store_n(T* p, int n) const {
    if (n > 0) store(p);
  }

  friend Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
  friend Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
  friend Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
  friend Vec operator/(Vec a, Vec b) { return {a.v / b.v}; }
  /// a * b + c.
  static Vec fma(Vec a, Vec b, Vec c) { return {std::fma(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {a.v > b.v ? a.v : b.v}; }
  static Vec min(Vec a, Vec b) { return {a.v < b.v ? a.v : b.v}; }
  static Vec abs(Vec a) { return {std::fabs(a.v)}; }
  /// |magnitude| with the sign of `sign`.
  static Vec copysign(Vec magnitude, Vec sign) { return {std::copysign(magnitude.v, sign.v)}; }
  /// a < b ? x : y, lane by lane.
  static Vec select_less(Vec a, Vec b, Vec x, Vec y) { return {a.v < b.v ? x.v : y.v}; }
  /// a == b ? x : y, lane by lane.
  static Vec select_equal(Vec a, Vec b, Vec x, Vec y) { return {a.v == b.v ? x.v : y.v}; }
  /// 2^x; exp2(-inf) = 0.
  static Vec exp2(Vec x) { return {std::exp2(x.v)}; }
  /// Lane i = the sum of a[i]'s lanes (one lane: a[0] itself).
  static Vec reduce_add_each(const Vec* a) { return a[0]; }
  float reduce_max() const { return v; }
  float reduce_add() const { return v; }
};

}  // namespace attn::cpu::scalar
