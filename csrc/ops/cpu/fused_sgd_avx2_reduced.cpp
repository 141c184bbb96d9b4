// AVX2+FMA spans of the CPU kernel of torchext::fused_sgd_ for float16 and
// bfloat16 tensors, picked at run time by fused_sgd.cpp (as the float32/float64
// spans of fused_sgd_avx2.cpp are).
//
// They reproduce torch.optim.SGD's default CPU path bit for bit (see
// ReducedCoeffs in fused_sgd_kernel.h for where torch rounds): every step of the
// update is computed in float32 and rounded to the dtype, and x + a·y is one
// fused multiply-add for torch's "vector" elements and two roundings for its
// "scalar" ones. Both are computed 8 elements at a time here; the tail of a span
// goes through a zero-padded copy. Only functions of this file carry the target
// attribute, and it includes no ATen (see fused_sgd_kernel.h).
#include "fused_sgd_kernel.h"

#if TORCHEXT_SGD_AVX2

#include <immintrin.h>

#include <cstring>

#define TORCHEXT_AVX2_F16C __attribute__((target("avx2,fma,f16c")))
#define TORCHEXT_AVX2_F16C_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace torchext::fused_sgd {
namespace {

constexpr int kRoundNearestEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Loading 8 elements into float32 lanes, storing them back, and rounding float32
// lanes to the values the dtype can hold (round to nearest, ties to even).
struct Half8 {
  TORCHEXT_AVX2_F16C_INLINE static __m256 load(const uint16_t* x) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  }
  TORCHEXT_AVX2_F16C_INLINE static void store(uint16_t* x, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x), _mm256_cvtps_ph(v, kRoundNearestEven));
  }
  TORCHEXT_AVX2_F16C_INLINE static __m256 round(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, kRoundNearestEven));
  }
};

struct BFloat8 {
  TORCHEXT_AVX2_F16C_INLINE static __m256 load(const uint16_t* x) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  // The float32 bits of the rounded values (their low 16 bits are zero). A NaN
  // stays a NaN (made quiet, so that dropping its low bits cannot make it inf).
  TORCHEXT_AVX2_F16C_INLINE static __m256i rounded_bits(__m256 v) {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i quiet_nan = _mm256_or_si256(bits, _mm256_set1_epi32(0x00400000));
    rounded = _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
    return _mm256_and_si256(rounded, _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
  }
  TORCHEXT_AVX2_F16C_INLINE static __m256 round(__m256 v) {
    return _mm256_castsi256_ps(rounded_bits(v));
  }
  TORCHEXT_AVX2_F16C_INLINE static void store(uint16_t* x, __m256 v) {
    const __m256i high = _mm256_srli_epi32(rounded_bits(v), 16);  // 8 × u32 in [0, 65535]
    const __m128i packed =
        _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x), packed);
  }
};

// The coefficients broadcast once per span.
struct Broadcast {
  __m256 neg_lr, weight_decay, one_minus_dampening, momentum_alpha, momentum, inv_scale;
};

// M(y, a, x) = x + a·y rounded to the dtype: one fused multiply-add (torch's
// vector elements) or a rounded product, then a rounded sum (its scalar ones).
template <class D, bool kFused>
TORCHEXT_AVX2_F16C_INLINE __m256 add_scaled(__m256 x, __m256 a, __m256 y) {
  if constexpr (kFused) {
    return D::round(_mm256_fmadd_ps(y, a, x));
  } else {
    return D::round(_mm256_add_ps(x, D::round(_mm256_mul_ps(a, y))));
  }
}

// Eight elements of the update in ReducedCoeffs' order of operations.
template <class D, bool kFused>
TORCHEXT_AVX2_F16C_INLINE void step8(uint16_t* p, uint16_t* g, uint16_t* b, bool first_step,
                                     const ReducedCoeffs& c, const Broadcast& k) {
  const __m256 vp = D::load(p);
  __m256 vg = D::load(g);
  if (c.has_scale) vg = D::round(_mm256_mul_ps(vg, k.inv_scale));
  __m256 d = c.maximize ? _mm256_xor_ps(vg, _mm256_set1_ps(-0.0f)) : vg;  // exact negation
  if (c.has_weight_decay) d = add_scaled<D, kFused>(d, k.weight_decay, vp);
  if (b != nullptr) {
    __m256 vb = d;
    if (!first_step) {
      const __m256 decayed = D::round(_mm256_mul_ps(D::load(b), k.momentum));
      vb = add_scaled<D, kFused>(decayed, k.one_minus_dampening, d);
    }
    D::store(b, vb);
    d = c.nesterov ? add_scaled<D, kFused>(d, k.momentum_alpha, vb) : vb;
  }
  D::store(p, add_scaled<D, kFused>(vp, k.neg_lr, d));
  if (c.has_scale) D::store(g, vg);
}

template <class D, bool kFused>
TORCHEXT_AVX2_F16C void span(uint16_t* p, uint16_t* g, uint16_t* b, int64_t n, bool first_step,
                             const ReducedCoeffs& c) {
  const Broadcast k{_mm256_set1_ps(c.neg_lr),
                    _mm256_set1_ps(c.weight_decay),
                    _mm256_set1_ps(c.one_minus_dampening),
                    _mm256_set1_ps(c.momentum_alpha),
                    _mm256_set1_ps(c.momentum),
                    _mm256_set1_ps(c.inv_scale)};
  constexpr int64_t W = 8;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    step8<D, kFused>(p + i, g + i, b != nullptr ? b + i : nullptr, first_step, c, k);
  }
  if (i == n) return;
  uint16_t tp[W] = {}, tg[W] = {}, tb[W] = {};
  const size_t bytes = static_cast<size_t>(n - i) * sizeof(uint16_t);
  std::memcpy(tp, p + i, bytes);
  std::memcpy(tg, g + i, bytes);
  if (b != nullptr) std::memcpy(tb, b + i, bytes);
  step8<D, kFused>(tp, tg, b != nullptr ? tb : nullptr, first_step, c, k);
  std::memcpy(p + i, tp, bytes);
  if (b != nullptr) std::memcpy(b + i, tb, bytes);
  if (c.has_scale) std::memcpy(g + i, tg, bytes);
}

template <class D>
void span_for(uint16_t* p, uint16_t* g, uint16_t* b, int64_t n, bool first_step,
              bool vector_semantics, const ReducedCoeffs& c) {
  if (vector_semantics) {
    span<D, true>(p, g, b, n, first_step, c);
  } else {
    span<D, false>(p, g, b, n, first_step, c);
  }
}

}  // namespace

void sgd_span_avx2(Reduced dtype, uint16_t* p, uint16_t* g, uint16_t* b, int64_t n, bool first_step,
                   bool vector_semantics, const ReducedCoeffs& c) {
  if (dtype == Reduced::kHalf) {
    span_for<Half8>(p, g, b, n, first_step, vector_semantics, c);
  } else {
    span_for<BFloat8>(p, g, b, n, first_step, vector_semantics, c);
  }
}

}  // namespace torchext::fused_sgd

#endif  // TORCHEXT_SGD_AVX2
