// The span functions of the CPU kernel of torchext::fused_sgd_ for one SIMD
// build, over the update of csrc/ops/sgd_math.h. Included once by each build's
// file (fused_sgd_avx2.cpp, fused_sgd_avx512.cpp), which first defines
//   TORCHEXT_SGD_TARGET  the build's target attribute (csrc/cpu/dispatch.h)
//   TORCHEXT_SIMD_VEC    the namespace of its vector types (csrc/cpu/vec_*.h)
//   TORCHEXT_SGD_SPAN    the name of its entry points (fused_sgd_kernel.h)
// The templates live in an unnamed namespace: each build has its own.
//
// float32/float64: each x + a·y is one fused multiply-add, as torch's AVX2 and
// AVX-512 kernels compute add(x, y, alpha=a) (vec::fmadd), so results match
// torch's default path bit for bit on those builds. float16/bfloat16: see
// fused_sgd_reduced.h. The tail of a span goes through a zero-padded copy, so
// every element gets the same instructions.
#pragma once

#include "ops/cpu/fused_sgd_kernel.h"

#include <cstring>
#include <type_traits>

#define TORCHEXT_SGD_SIMD_INLINE TORCHEXT_SGD_TARGET inline __attribute__((always_inline))

namespace torchext::fused_sgd {
namespace {

namespace vec = TORCHEXT_SIMD_VEC;

// The arithmetic of float32/float64 elements: no rounding beyond the type's own.
template <class A>
struct FusedOps {
  using V = typename A::V;
  TORCHEXT_SGD_SIMD_INLINE static V mul(V a, V b) { return A::mul(a, b); }
  TORCHEXT_SGD_SIMD_INLINE static V add_scaled(V x, V a, V y) { return A::fmadd(a, y, x); }
  TORCHEXT_SGD_SIMD_INLINE static V neg(V a) { return A::mul(a, A::set1(-1)); }
};

// float16/bfloat16 elements (D: vec::Half or vec::BFloat16) in float lanes,
// rounded to the dtype after each op; x + a·y fused for torch's vector
// elements, a rounded product then a rounded sum for its scalar ones.
template <class D, bool kFused>
struct ReducedOps {
  using V = typename D::V;
  using F = vec::Float;
  TORCHEXT_SGD_SIMD_INLINE static V mul(V a, V b) { return D::round(F::mul(a, b)); }
  TORCHEXT_SGD_SIMD_INLINE static V add_scaled(V x, V a, V y) {
    if constexpr (kFused) {
      return D::round(F::fmadd(a, y, x));
    } else {
      return D::round(F::add(x, D::round(F::mul(a, y))));
    }
  }
  TORCHEXT_SGD_SIMD_INLINE static V neg(V a) { return F::mul(a, F::set1(-1.0f)); }
};

// Loads and stores of one element type: the float/double vectors themselves,
// or 16-bit values converted to and from float lanes.
template <class A>
struct SameType {
  using T = typename A::T;
  using V = typename A::V;
  static constexpr int kWidth = A::kWidth;
  TORCHEXT_SGD_SIMD_INLINE static V load(const T* x) { return A::load(x); }
  TORCHEXT_SGD_SIMD_INLINE static void store(T* x, V v) { A::store(x, v); }
  // The first lanes only (a tail): the others load as 0 and are not stored.
  TORCHEXT_SGD_SIMD_INLINE static V load(const T* x, typename A::Mask m) { return A::load(x, m); }
  TORCHEXT_SGD_SIMD_INLINE static void store(T* x, V v, typename A::Mask m) { A::store(x, v, m); }
};
template <class D>
struct Stored16 {
  using T = uint16_t;
  using V = typename D::V;
  static constexpr int kWidth = D::kWidth;
  TORCHEXT_SGD_SIMD_INLINE static V load(const T* x) { return D::load(x); }
  TORCHEXT_SGD_SIMD_INLINE static void store(T* x, V v) { D::store(x, v); }
};

template <class A, typename S>
TORCHEXT_SGD_SIMD_INLINE Coeffs<typename A::V> broadcast(const Coeffs<S>& c) {
  return {A::set1(c.neg_lr),
          A::set1(c.weight_decay),
          A::set1(c.one_minus_dampening),
          A::set1(c.momentum),
          A::set1(c.momentum_alpha),
          A::set1(c.inv_scale),
          c.has_buf,
          c.nesterov,
          c.maximize,
          c.has_scale,
          c.has_weight_decay};
}

// One vector of elements at p, g, b (with a mask: its first lanes only).
template <class Ops, class Mem, class... Mask>
TORCHEXT_SGD_SIMD_INLINE void step_vector(typename Mem::T* p, typename Mem::T* g,
                                          typename Mem::T* b, bool first_step,
                                          const Coeffs<typename Mem::V>& c, Mask... mask) {
  using V = typename Mem::V;
  V vp = Mem::load(p, mask...), vg = Mem::load(g, mask...);
  V vb = b != nullptr && !first_step ? Mem::load(b, mask...) : vp;  // unread on a first step
  sgd_math::update<Ops>(vp, vg, vb, first_step, c);
  Mem::store(p, vp, mask...);
  if (b != nullptr) Mem::store(b, vb, mask...);
  if (c.has_scale) Mem::store(g, vg, mask...);
}

template <class Ops, class Mem, class A, typename S>
TORCHEXT_SGD_SIMD_INLINE void span(typename Mem::T* p, typename Mem::T* g, typename Mem::T* b,
                                   int64_t n, bool first_step, const Coeffs<S>& scalars) {
  using T = typename Mem::T;
  constexpr int64_t W = Mem::kWidth;
  const Coeffs<typename A::V> c = broadcast<A>(scalars);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    step_vector<Ops, Mem>(p + i, g + i, b != nullptr ? b + i : nullptr, first_step, c);
  }
  if (i == n) return;
  if constexpr (std::is_same_v<Mem, SameType<A>>) {
    // The tail as one masked vector: every bias of a small layer has a tail.
    step_vector<Ops, Mem>(p + i, g + i, b != nullptr ? b + i : nullptr, first_step, c,
                          A::first(n - i));
    return;
  }
  T tp[W] = {}, tg[W] = {}, tb[W] = {};
  const size_t bytes = static_cast<size_t>(n - i) * sizeof(T);
  std::memcpy(tp, p + i, bytes);
  std::memcpy(tg, g + i, bytes);
  if (b != nullptr) std::memcpy(tb, b + i, bytes);
  step_vector<Ops, Mem>(tp, tg, b != nullptr ? tb : nullptr, first_step, c);
  std::memcpy(p + i, tp, bytes);
  if (b != nullptr) std::memcpy(b + i, tb, bytes);
  if (c.has_scale) std::memcpy(g + i, tg, bytes);
}

template <typename T, class A>
TORCHEXT_SGD_TARGET void span_of(T* p, T* g, T* b, int64_t n, bool first_step, const Coeffs<T>& c) {
  span<FusedOps<A>, SameType<A>, A>(p, g, b, n, first_step, c);
}

template <class D>
TORCHEXT_SGD_TARGET void reduced_span_of(uint16_t* p, uint16_t* g, uint16_t* b, int64_t n,
                                         bool first_step, bool vector_semantics,
                                         const Coeffs<float>& c) {
  if (vector_semantics) {
    span<ReducedOps<D, true>, Stored16<D>, vec::Float>(p, g, b, n, first_step, c);
  } else {
    span<ReducedOps<D, false>, Stored16<D>, vec::Float>(p, g, b, n, first_step, c);
  }
}

}  // namespace

// The entry points: plain functions (with GCC, a declaration and a definition
// with different target attributes would be two versions of one function).
void TORCHEXT_SGD_SPAN(float* p, float* g, float* b, int64_t n, bool first_step,
                       const Coeffs<float>& c) {
  span_of<float, vec::Float>(p, g, b, n, first_step, c);
}

void TORCHEXT_SGD_SPAN(double* p, double* g, double* b, int64_t n, bool first_step,
                       const Coeffs<double>& c) {
  span_of<double, vec::Double>(p, g, b, n, first_step, c);
}

void TORCHEXT_SGD_SPAN(Reduced dtype, uint16_t* p, uint16_t* g, uint16_t* b, int64_t n,
                       bool first_step, bool vector_semantics, const Coeffs<float>& c) {
  if (dtype == Reduced::kHalf) {
    reduced_span_of<vec::Half>(p, g, b, n, first_step, vector_semantics, c);
  } else {
    reduced_span_of<vec::BFloat16>(p, g, b, n, first_step, vector_semantics, c);
  }
}

}  // namespace torchext::fused_sgd
