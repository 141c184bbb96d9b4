// AVX-512 vector types of torchext's CPU kernels: the operations the kernel
// bodies (csrc/cpu/*_simd.h, csrc/train/*_simd.h) are written against, for
// 16 floats or 8 doubles per register, and 16 float16/bfloat16 values held as
// floats. Every function carries TORCHEXT_TARGET_AVX512 and is forced inline,
// so it may only be called from functions with that attribute (dispatch.h).
// The AVX2 types of vec_avx2.h have the same members.
#pragma once

#include "cpu/dispatch.h"

#if TORCHEXT_X86_SIMD

#include <immintrin.h>

#include <cstdint>

#define TORCHEXT_AVX512_INLINE TORCHEXT_TARGET_AVX512 inline __attribute__((always_inline))

namespace torchext::cpu::avx512 {

struct Float {
  using T = float;
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16;
  // The first n lanes (0 < n <= kWidth).
  TORCHEXT_AVX512_INLINE static Mask first(int64_t n) {
    return static_cast<Mask>(n >= kWidth ? 0xffffu : (1u << n) - 1u);
  }
  TORCHEXT_AVX512_INLINE static V zero() { return _mm512_setzero_ps(); }
  TORCHEXT_AVX512_INLINE static V set1(T a) { return _mm512_set1_ps(a); }
  TORCHEXT_AVX512_INLINE static V load(const T* x) { return _mm512_loadu_ps(x); }
  TORCHEXT_AVX512_INLINE static V load(const T* x, Mask m) { return _mm512_maskz_loadu_ps(m, x); }
  TORCHEXT_AVX512_INLINE static void store(T* x, V v) { _mm512_storeu_ps(x, v); }
  TORCHEXT_AVX512_INLINE static void store(T* x, V v, Mask m) { _mm512_mask_storeu_ps(x, m, v); }
  TORCHEXT_AVX512_INLINE static V add(V a, V b) { return _mm512_add_ps(a, b); }
  TORCHEXT_AVX512_INLINE static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  TORCHEXT_AVX512_INLINE static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  // a·b + c, one rounding.
  TORCHEXT_AVX512_INLINE static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // Lanes where a < 0 (false for NaN) set to +0: torch.relu.
  TORCHEXT_AVX512_INLINE static V relu(V a) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, zero(), _CMP_LT_OQ), a, zero());
  }
  // g where a > 0 or a is NaN, else +0: threshold_backward(g, a, 0).
  TORCHEXT_AVX512_INLINE static V relu_grad(V g, V a) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, zero(), _CMP_LE_OQ), g, zero());
  }
  // The low and high halves of the lanes, as doubles.
  TORCHEXT_AVX512_INLINE static __m512d widen_low(V a) {
    return _mm512_cvtps_pd(_mm512_castps512_ps256(a));
  }
  TORCHEXT_AVX512_INLINE static __m512d widen_high(V a) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
  }
};

struct Double {
  using T = double;
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr int kWidth = 8;
  TORCHEXT_AVX512_INLINE static Mask first(int64_t n) {
    return static_cast<Mask>(n >= kWidth ? 0xffu : (1u << n) - 1u);
  }
  TORCHEXT_AVX512_INLINE static V zero() { return _mm512_setzero_pd(); }
  TORCHEXT_AVX512_INLINE static V set1(T a) { return _mm512_set1_pd(a); }
  TORCHEXT_AVX512_INLINE static V load(const T* x) { return _mm512_loadu_pd(x); }
  TORCHEXT_AVX512_INLINE static V load(const T* x, Mask m) { return _mm512_maskz_loadu_pd(m, x); }
  TORCHEXT_AVX512_INLINE static void store(T* x, V v) { _mm512_storeu_pd(x, v); }
  TORCHEXT_AVX512_INLINE static void store(T* x, V v, Mask m) { _mm512_mask_storeu_pd(x, m, v); }
  TORCHEXT_AVX512_INLINE static V add(V a, V b) { return _mm512_add_pd(a, b); }
  TORCHEXT_AVX512_INLINE static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  TORCHEXT_AVX512_INLINE static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  TORCHEXT_AVX512_INLINE static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  TORCHEXT_AVX512_INLINE static V relu(V a) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, zero(), _CMP_LT_OQ), a, zero());
  }
  TORCHEXT_AVX512_INLINE static V relu_grad(V g, V a) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, zero(), _CMP_LE_OQ), g, zero());
  }
  TORCHEXT_AVX512_INLINE static T sum(V a) { return _mm512_reduce_add_pd(a); }
};

// 16 float16 values, loaded into float lanes and rounded back on store.
struct Half {
  using V = __m512;
  static constexpr int kWidth = 16;
  TORCHEXT_AVX512_INLINE static V load(const uint16_t* x) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
  }
  TORCHEXT_AVX512_INLINE static void store(uint16_t* x, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // v rounded to the nearest float16 (ties to even), as a float.
  TORCHEXT_AVX512_INLINE static V round(V v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

// 16 bfloat16 values, likewise. Rounding is to nearest, ties to even; a NaN
// stays a NaN (made quiet, so dropping its low bits cannot turn it into inf).
struct BFloat16 {
  using V = __m512;
  static constexpr int kWidth = 16;
  TORCHEXT_AVX512_INLINE static V load(const uint16_t* x) {
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  // The float bits of the rounded values (their low 16 bits zero).
  TORCHEXT_AVX512_INLINE static __m512i rounded_bits(V v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded =
        _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i quiet_nan = _mm512_or_si512(bits, _mm512_set1_epi32(0x00400000));
    return _mm512_and_si512(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan),
                            _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  }
  TORCHEXT_AVX512_INLINE static V round(V v) { return _mm512_castsi512_ps(rounded_bits(v)); }
  TORCHEXT_AVX512_INLINE static void store(uint16_t* x, V v) {
    const __m512i high = _mm512_srli_epi32(rounded_bits(v), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x), _mm512_cvtepi32_epi16(high));
  }
};

}  // namespace torchext::cpu::avx512

#endif  // TORCHEXT_X86_SIMD
