// 8 floats in a ymm register (AVX2 + FMA + F16C). Include only from files compiled with
// -mavx2 -mfma -mf16c (src/cpu/*_avx2.cpp, *_avx512.cpp). Same interface as vec_scalar.hpp.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "attn/half.hpp"

namespace attn::cpu::avx2 {

struct Vec {
  static constexpr int width = 8;
  __m256 v;

  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const half_t* p) { return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))}; }
  /// bf16 is the upper half of an f32: widen and shift.
  static Vec load(const bfloat16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
  }
  /// First n lanes from p (0 <= n <= width), the rest zero; never reads past p + n.
  template <class T>
  static Vec load_n(const T* p, int n) {
    if (n == width) return load(p);
    T tmp[width] = {};
    std::memcpy(tmp, p, sizeof(T) * unsigned(n));
    return load(tmp);
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(half_t* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  /// Round to nearest even: add 0x7fff plus the lowest kept bit, keep the upper half.
  /// (NaN inputs are not special-cased: kernels never produce NaN.)
  void store(bfloat16_t* p) const {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  /// Writes the first n lanes (0 <= n <= width); never writes past p + n.
  template <class T>
  void store_n(T* p, int n) const {
    if (n == width) return store(p);
    T tmp[width];
    store(tmp);
    std::memcpy(p, tmp, sizeof(T) * unsigned(n));
  }

  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  static Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
  static Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  static Vec copysign(Vec magnitude, Vec sign) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    return {_mm256_or_ps(_mm256_andnot_ps(sign_bit, magnitude.v), _mm256_and_ps(sign_bit, sign.v))};
  }
  static Vec select_less(Vec a, Vec b, Vec x, Vec y) {
    return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))};
  }
  static Vec select_equal(Vec a, Vec b, Vec x, Vec y) {
    return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ))};
  }

  /// 2^x = 2^n * 2^f with n = round(x), f in [-1/2, 1/2]; 2^f by its degree-7 Taylor series
  /// (truncation < 6e-9, so float rounding dominates: ~1e-7 relative). x is clamped to
  /// [-127, 128): at n = -127 the exponent field is 0, so every x below about -126.5,
  /// -inf included, gives exactly 0 (flushing results under 2^-126, harmless for softmax).
  static Vec exp2(Vec x) {
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x.v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.99f));
    const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(xc, n);
    __m256 p = _mm256_set1_ps(1.5252733804059841e-05f);  // ln2^7 / 7!
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530393381606e-04f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-02f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return {_mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)))};
  }

  /// Lane i = the sum of a[i]'s lanes, for a[0..width): width dot products finished at once
  /// (a tree of hadds instead of width separate horizontal sums).
  static Vec reduce_add_each(const Vec* a) {
    const __m256 t0 = _mm256_hadd_ps(a[0].v, a[1].v), t1 = _mm256_hadd_ps(a[2].v, a[3].v);
    const __m256 t2 = _mm256_hadd_ps(a[4].v, a[5].v), t3 = _mm256_hadd_ps(a[6].v, a[7].v);
    // u0 = (sums of a0..a3 over lanes 0-3 | over lanes 4-7), u1 the same for a4..a7.
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return {_mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))};
  }

  float reduce_max() const {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  float reduce_add() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace attn::cpu::avx2
