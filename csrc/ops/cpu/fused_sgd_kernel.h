// What the two translation units of the CPU kernel of torchext::fused_sgd_
// share: the step's hyper-parameters, and the AVX2+FMA span functions that
// fused_sgd.cpp calls when the CPU has them.
//
// This header includes no ATen on purpose. fused_sgd_avx2.cpp compiles its
// functions for AVX2+FMA (a target attribute, not a build flag); an inline
// ATen/c10 function compiled that way there and merged by the linker with the
// generic copies of other translation units would run AVX2 code on any CPU.
#pragma once

#include <cstdint>

// The AVX2+FMA spans exist in x86-64 builds by GCC or Clang (target attributes).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TORCHEXT_SGD_AVX2 1
#else
#define TORCHEXT_SGD_AVX2 0
#endif

namespace torchext::fused_sgd {

// Hyper-parameters of one call, cast to the math type T of a float32/float64 tensor.
template <typename T>
struct Coeffs {
  T neg_lr, momentum, one_minus_dampening, weight_decay, inv_scale;
  bool has_buf, nesterov, maximize, has_scale, has_weight_decay;
};

struct StepArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
  bool has_scale;
  // 1 / grad_scale, computed as torch.amp.GradScaler computes its inverse scale
  // (in float64, then rounded to float32): unscaling multiplies by it, as
  // GradScaler.unscale_ does.
  float inv_scale;

  template <typename T>
  Coeffs<T> coeffs() const {
    return {static_cast<T>(-lr),
            static_cast<T>(momentum),
            static_cast<T>(1 - dampening),
            static_cast<T>(weight_decay),
            static_cast<T>(inv_scale),
            momentum != 0,
            nesterov,
            maximize,
            has_scale,
            weight_decay != 0};
  }
};

// ---------------------------------------------------------------------------
// float16 / bfloat16. torch.optim.SGD's default (single-tensor) CPU path runs
// one ATen op per step of the update, and each op rounds its result to the
// tensor's dtype. In `x.add(y, alpha=a)` the scalar `a` is first converted to
// that dtype; in `x.mul(m)` the scalar stays float32. How the float32
// arithmetic inside an op rounds depends on where an element falls:
//  - "vector" elements (the vectorised loop of torch's AVX2/AVX-512 kernels):
//    x + a·y is one fused multiply-add in float32, then one rounding;
//  - "scalar" elements (the loop's tail, and every element of torch's DEFAULT
//    kernels): a·y is rounded to the dtype, then x + (a·y) is rounded again.
// So one update, in float32 with R(·) rounding to the dtype and
// M(y, a, x) = x + a·y rounded as above, is
//   g = R(g · inv_scale)                    (with grad_scale; stored to grad)
//   d = maximize ? -g : g
//   d = M(p, weight_decay, d)               (weight decay)
//   b = d (first step) or M(d, 1 - dampening, R(b · momentum))
//   d = nesterov ? M(b, momentum, d) : b
//   p = M(d, -lr, p)
struct ReducedCoeffs {
  // Each `alpha` of torch's add calls, converted to the dtype and back to float.
  float neg_lr, weight_decay, one_minus_dampening, momentum_alpha;
  float momentum;  // the multiplier of buf.mul_(momentum), in float32
  float inv_scale;
  bool has_buf, nesterov, maximize, has_scale, has_weight_decay;
};

// Which reduced-precision dtype a span of 16-bit elements holds.
enum class Reduced { kHalf, kBFloat16 };

#if TORCHEXT_SGD_AVX2
// Steps n consecutive elements with AVX2+FMA: the contract of sgd_span in
// fused_sgd.cpp (b is null without momentum; g is written only with
// grad_scale). Call only on a CPU with AVX2 and FMA.
void sgd_span_avx2(float* p, float* g, float* b, int64_t n, bool first_step, const StepArgs& args);
void sgd_span_avx2(double* p, double* g, double* b, int64_t n, bool first_step,
                   const StepArgs& args);
// The same for float16/bfloat16 elements (raw 16-bit storage), with the
// rounding of torch's "vector" (vector_semantics) or "scalar" elements. Needs
// F16C as well for float16, which every AVX2 CPU has.
void sgd_span_avx2(Reduced dtype, uint16_t* p, uint16_t* g, uint16_t* b, int64_t n, bool first_step,
                   bool vector_semantics, const ReducedCoeffs& c);
#endif

}  // namespace torchext::fused_sgd
