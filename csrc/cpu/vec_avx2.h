// AVX2 (+FMA, F16C) vector types of torchext's CPU kernels: the members of
// vec_avx512.h's types, for 8 floats or 4 doubles per register, and 8
// float16/bfloat16 values held as floats. Lane masks are vectors (AVX2 has no
// mask registers); masked loads and stores use vmaskmov. Every function carries
// TORCHEXT_TARGET_AVX2 and is forced inline.
#pragma once

#include "cpu/dispatch.h"

#if TORCHEXT_X86_SIMD

#include <immintrin.h>

#include <cstdint>

#define TORCHEXT_AVX2_INLINE TORCHEXT_TARGET_AVX2 inline __attribute__((always_inline))

namespace torchext::cpu::avx2 {

struct Float {
  using T = float;
  using V = __m256;
  using Mask = __m256i;
  static constexpr int kWidth = 8;
  // The first n lanes (0 < n <= kWidth).
  TORCHEXT_AVX2_INLINE static Mask first(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  TORCHEXT_AVX2_INLINE static V zero() { return _mm256_setzero_ps(); }
  TORCHEXT_AVX2_INLINE static V set1(T a) { return _mm256_set1_ps(a); }
  TORCHEXT_AVX2_INLINE static V load(const T* x) { return _mm256_loadu_ps(x); }
  TORCHEXT_AVX2_INLINE static V load(const T* x, Mask m) { return _mm256_maskload_ps(x, m); }
  TORCHEXT_AVX2_INLINE static void store(T* x, V v) { _mm256_storeu_ps(x, v); }
  TORCHEXT_AVX2_INLINE static void store(T* x, V v, Mask m) { _mm256_maskstore_ps(x, m, v); }
  TORCHEXT_AVX2_INLINE static V add(V a, V b) { return _mm256_add_ps(a, b); }
  TORCHEXT_AVX2_INLINE static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  TORCHEXT_AVX2_INLINE static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  TORCHEXT_AVX2_INLINE static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  TORCHEXT_AVX2_INLINE static V relu(V a) {
    return _mm256_blendv_ps(a, zero(), _mm256_cmp_ps(a, zero(), _CMP_LT_OQ));
  }
  TORCHEXT_AVX2_INLINE static V relu_grad(V g, V a) {
    return _mm256_blendv_ps(g, zero(), _mm256_cmp_ps(a, zero(), _CMP_LE_OQ));
  }
  // The low and high halves of the lanes, as doubles.
  TORCHEXT_AVX2_INLINE static __m256d widen_low(V a) {
    return _mm256_cvtps_pd(_mm256_castps256_ps128(a));
  }
  TORCHEXT_AVX2_INLINE static __m256d widen_high(V a) {
    return _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
  }
};

struct Double {
  using T = double;
  using V = __m256d;
  using Mask = __m256i;
  static constexpr int kWidth = 4;
  TORCHEXT_AVX2_INLINE static Mask first(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  TORCHEXT_AVX2_INLINE static V zero() { return _mm256_setzero_pd(); }
  TORCHEXT_AVX2_INLINE static V set1(T a) { return _mm256_set1_pd(a); }
  TORCHEXT_AVX2_INLINE static V load(const T* x) { return _mm256_loadu_pd(x); }
  TORCHEXT_AVX2_INLINE static V load(const T* x, Mask m) { return _mm256_maskload_pd(x, m); }
  TORCHEXT_AVX2_INLINE static void store(T* x, V v) { _mm256_storeu_pd(x, v); }
  TORCHEXT_AVX2_INLINE static void store(T* x, V v, Mask m) { _mm256_maskstore_pd(x, m, v); }
  TORCHEXT_AVX2_INLINE static V add(V a, V b) { return _mm256_add_pd(a, b); }
  TORCHEXT_AVX2_INLINE static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  TORCHEXT_AVX2_INLINE static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  TORCHEXT_AVX2_INLINE static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  TORCHEXT_AVX2_INLINE static V relu(V a) {
    return _mm256_blendv_pd(a, zero(), _mm256_cmp_pd(a, zero(), _CMP_LT_OQ));
  }
  TORCHEXT_AVX2_INLINE static V relu_grad(V g, V a) {
    return _mm256_blendv_pd(g, zero(), _mm256_cmp_pd(a, zero(), _CMP_LE_OQ));
  }
  TORCHEXT_AVX2_INLINE static T sum(V a) {
    const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
  }
};

// 8 float16 values, loaded into float lanes and rounded back on store.
struct Half {
  using V = __m256;
  static constexpr int kWidth = 8;
  TORCHEXT_AVX2_INLINE static V load(const uint16_t* x) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  }
  TORCHEXT_AVX2_INLINE static void store(uint16_t* x, V v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  TORCHEXT_AVX2_INLINE static V round(V v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

// 8 bfloat16 values, likewise (rounding as vec_avx512.h's BFloat16).
struct BFloat16 {
  using V = __m256;
  static constexpr int kWidth = 8;
  TORCHEXT_AVX2_INLINE static V load(const uint16_t* x) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  TORCHEXT_AVX2_INLINE static __m256i rounded_bits(V v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i quiet_nan = _mm256_or_si256(bits, _mm256_set1_epi32(0x00400000));
    return _mm256_and_si256(_mm256_blendv_epi8(rounded, quiet_nan, is_nan),
                            _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
  }
  TORCHEXT_AVX2_INLINE static V round(V v) { return _mm256_castsi256_ps(rounded_bits(v)); }
  TORCHEXT_AVX2_INLINE static void store(uint16_t* x, V v) {
    const __m256i high = _mm256_srli_epi32(rounded_bits(v), 16);  // 8 × u32 in [0, 65535]
    const __m128i packed =
        _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x), packed);
  }
};

}  // namespace torchext::cpu::avx2

#endif  // TORCHEXT_X86_SIMD
