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

// Hyper-parameters of one call, cast to the math type T of a tensor.
template <typename T>
struct Coeffs {
  T neg_lr, momentum, one_minus_dampening, weight_decay, grad_scale;
  bool has_buf, nesterov, maximize, has_scale, has_weight_decay;
};

struct StepArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
  bool has_scale;
  float grad_scale;

  template <typename T>
  Coeffs<T> coeffs() const {
    return {static_cast<T>(-lr),           static_cast<T>(momentum),
            static_cast<T>(1 - dampening), static_cast<T>(weight_decay),
            static_cast<T>(grad_scale),    momentum != 0,
            nesterov,                      maximize,
            has_scale,                     weight_decay != 0};
  }
};

#if TORCHEXT_SGD_AVX2
// Steps n consecutive elements with AVX2+FMA: the contract of sgd_span in
// fused_sgd.cpp (b is null without momentum; g is written only with
// grad_scale). Call only on a CPU with AVX2 and FMA.
void sgd_span_avx2(float* p, float* g, float* b, int64_t n, bool first_step,
                   const StepArgs& args);
void sgd_span_avx2(double* p, double* g, double* b, int64_t n, bool first_step,
                   const StepArgs& args);
#endif

}  // namespace torchext::fused_sgd
