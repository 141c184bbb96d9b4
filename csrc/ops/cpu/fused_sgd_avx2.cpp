// AVX2+FMA spans of the CPU kernel of torchext::fused_sgd_, which fused_sgd.cpp
// picks at run time on CPUs that have both.
//
// The extension is built with one portable flag set (setup.py and CMake share
// it), so at::vec compiles to its generic, array-based implementation there.
// Here the span functions carry __attribute__((target("avx2,fma"))) and use raw
// intrinsics: 8 floats or 4 doubles per instruction, enough for the step to be
// limited by memory bandwidth rather than by arithmetic. Only functions of this
// file get the attribute and it includes no ATen (see fused_sgd_kernel.h).
//
// The order of operations is sgd_update's in fused_sgd.cpp (torch.optim.SGD's).
// Each a * b + c is one fused multiply-add, as in torch's own AVX2 and AVX-512
// kernels (`add(..., alpha=...)` is vec::fmadd there), so a result may differ
// from the portable path in the last bit. The tail of a span goes through a
// zero-padded copy, so every element gets the same instructions.
#include "fused_sgd_kernel.h"

#if TORCHEXT_SGD_AVX2

#include <immintrin.h>

#include <cstring>

#define TORCHEXT_AVX2_FMA __attribute__((target("avx2,fma")))
#define TORCHEXT_AVX2_FMA_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

namespace torchext::fused_sgd {
namespace {

// The vector operations the step needs, for one element type.
struct Float8 {
  using T = float;
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  TORCHEXT_AVX2_FMA_INLINE static V load(const T* x) { return _mm256_loadu_ps(x); }
  TORCHEXT_AVX2_FMA_INLINE static void store(T* x, V v) { _mm256_storeu_ps(x, v); }
  TORCHEXT_AVX2_FMA_INLINE static V set1(T a) { return _mm256_set1_ps(a); }
  TORCHEXT_AVX2_FMA_INLINE static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  TORCHEXT_AVX2_FMA_INLINE static V muladd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};

struct Double4 {
  using T = double;
  using V = __m256d;
  static constexpr int64_t kWidth = 4;
  TORCHEXT_AVX2_FMA_INLINE static V load(const T* x) { return _mm256_loadu_pd(x); }
  TORCHEXT_AVX2_FMA_INLINE static void store(T* x, V v) { _mm256_storeu_pd(x, v); }
  TORCHEXT_AVX2_FMA_INLINE static V set1(T a) { return _mm256_set1_pd(a); }
  TORCHEXT_AVX2_FMA_INLINE static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  TORCHEXT_AVX2_FMA_INLINE static V muladd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};

// The hyper-parameters broadcast once per span.
template <class A>
struct Broadcast {
  typename A::V neg_lr, momentum, one_minus_dampening, weight_decay, inv_scale, minus_one;
};

// One vector of elements: sgd_update of fused_sgd.cpp. The branches test
// per-call constants, so they cost next to nothing against the memory traffic.
template <class A>
TORCHEXT_AVX2_FMA_INLINE void step_vector(typename A::T* p, typename A::T* g, typename A::T* b,
                                          bool first_step, const Coeffs<typename A::T>& c,
                                          const Broadcast<A>& k) {
  using V = typename A::V;
  const V vp = A::load(p);
  V vg = A::load(g);
  if (c.has_scale) vg = A::mul(vg, k.inv_scale);
  V d = c.maximize ? A::mul(vg, k.minus_one) : vg;  // exact negation (-0 for 0)
  if (c.has_weight_decay) d = A::muladd(vp, k.weight_decay, d);
  if (b != nullptr) {
    const V vb =
        first_step ? d : A::muladd(d, k.one_minus_dampening, A::mul(A::load(b), k.momentum));
    A::store(b, vb);
    d = c.nesterov ? A::muladd(vb, k.momentum, d) : vb;
  }
  A::store(p, A::muladd(d, k.neg_lr, vp));
  if (c.has_scale) A::store(g, vg);
}

template <class A>
TORCHEXT_AVX2_FMA void span(typename A::T* p, typename A::T* g, typename A::T* b, int64_t n,
                            bool first_step, const StepArgs& args) {
  using T = typename A::T;
  constexpr int64_t W = A::kWidth;
  const Coeffs<T> c = args.coeffs<T>();
  const Broadcast<A> k{
      A::set1(c.neg_lr),       A::set1(c.momentum),  A::set1(c.one_minus_dampening),
      A::set1(c.weight_decay), A::set1(c.inv_scale), A::set1(T(-1))};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    step_vector<A>(p + i, g + i, b != nullptr ? b + i : nullptr, first_step, c, k);
  }
  if (i == n) return;
  T tp[W] = {}, tg[W] = {}, tb[W] = {};
  const size_t bytes = static_cast<size_t>(n - i) * sizeof(T);
  std::memcpy(tp, p + i, bytes);
  std::memcpy(tg, g + i, bytes);
  if (b != nullptr) std::memcpy(tb, b + i, bytes);
  step_vector<A>(tp, tg, b != nullptr ? tb : nullptr, first_step, c, k);
  std::memcpy(p + i, tp, bytes);
  if (b != nullptr) std::memcpy(b + i, tb, bytes);
  if (c.has_scale) std::memcpy(g + i, tg, bytes);
}

}  // namespace

// Plain (not target-attributed) entry points: with GCC, a declaration and a
// definition with different target attributes would be two versions of the
// function, so the attribute stays on the internal templates.
void sgd_span_avx2(float* p, float* g, float* b, int64_t n, bool first_step, const StepArgs& args) {
  span<Float8>(p, g, b, n, first_step, args);
}

void sgd_span_avx2(double* p, double* g, double* b, int64_t n, bool first_step,
                   const StepArgs& args) {
  span<Double4>(p, g, b, n, first_step, args);
}

}  // namespace torchext::fused_sgd

#endif  // TORCHEXT_SGD_AVX2
