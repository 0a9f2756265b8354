// 16 floats in a zmm register (AVX-512 F/BW/VL/DQ). Include only from *_avx512.cpp files.
// Same interface as vec_scalar.hpp; tails use mask registers instead of bounce buffers.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "attn/half.hpp"

namespace attn::cpu::avx512 {

struct Vec {
  static constexpr int width = 16;
  __m512 v;

  static __mmask16 first(int n) { return __mmask16((1u << n) - 1u); }

  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const half_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
  static Vec load(const bfloat16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
  }
  /// First n lanes from p (0 <= n <= width), the rest zero; masked loads never fault past p + n.
  static Vec load_n(const float* p, int n) { return {_mm512_maskz_loadu_ps(first(n), p)}; }
  static Vec load_n(const half_t* p, int n) {
    return {_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(n), p))};
  }
  static Vec load_n(const bfloat16_t* p, int n) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first(n), p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(half_t* p) const { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_f16()); }
  void store(bfloat16_t* p) const { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16()); }
  void store_n(float* p, int n) const { _mm512_mask_storeu_ps(p, first(n), v); }
  void store_n(half_t* p, int n) const { _mm256_mask_storeu_epi16(p, first(n), to_f16()); }
  void store_n(bfloat16_t* p, int n) const { _mm256_mask_storeu_epi16(p, first(n), to_bf16()); }

  __m256i to_f16() const { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  /// Round to nearest even by integer arithmetic (no AVX512-BF16 needed); NaN not special-cased.
  __m256i to_bf16() const {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    return _mm512_cvtepi32_epi16(rounded);
  }

  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  static Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
  static Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
  static Vec copysign(Vec magnitude, Vec sign) {
    const __m512i sign_bit = _mm512_set1_epi32(int(0x80000000u));
    const __m512i m = _mm512_andnot_si512(sign_bit, _mm512_castps_si512(magnitude.v));
    const __m512i s = _mm512_and_si512(sign_bit, _mm512_castps_si512(sign.v));
    return {_mm512_castsi512_ps(_mm512_or_si512(m, s))};
  }
  static Vec select_less(Vec a, Vec b, Vec x, Vec y) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v)};
  }
  static Vec select_equal(Vec a, Vec b, Vec x, Vec y) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ), y.v, x.v)};
  }

  /// Same algorithm as avx2::Vec::exp2 (see there): clamp, split, degree-7 polynomial, scale.
  static Vec exp2(Vec x) {
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x.v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.99f));
    const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(xc, n);
    __m512 p = _mm512_set1_ps(1.5252733804059841e-05f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381606e-04f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return {_mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23)))};
  }

  /// Lane i = the sum of a[i]'s lanes, for a[0..width): halves added, then a tree of hadds on
  /// each group of eight (as avx2::Vec::reduce_add_each).
  static Vec reduce_add_each(const Vec* a) {
    __m256 h[16];
    for (int i = 0; i < 16; ++i)
      h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i].v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[i].v), 1)));
    __m256 r[2];
    for (int g = 0; g < 2; ++g) {
      const __m256* x = h + 8 * g;
      const __m256 t0 = _mm256_hadd_ps(x[0], x[1]), t1 = _mm256_hadd_ps(x[2], x[3]);
      const __m256 t2 = _mm256_hadd_ps(x[4], x[5]), t3 = _mm256_hadd_ps(x[6], x[7]);
      const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
      r[g] = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    }
    return {_mm512_insertf32x8(_mm512_castps256_ps512(r[0]), r[1], 1)};
  }

  float reduce_max() const { return _mm512_reduce_max_ps(v); }
  float reduce_add() const { return _mm512_reduce_add_ps(v); }
};

}  // namespace attn::cpu::avx512
