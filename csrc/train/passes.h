// The SIMD builds of the training core's elementwise passes (passes_simd.h),
// which cpu_kernels.cpp calls where cpu_isa() allows it; their contracts are
// those of the portable passes there.
#pragma once

#include <torchext/activation_loss.h>

#include <cstdint>

namespace torchext::train::cpu {

// Declares NAME_avx2 and NAME_avx512 for float and double.
#define TORCHEXT_DECLARE_PASSES(isa)                                                          \
  double squared_error_##isa(const float* out, const float* target, int64_t n, float norm,    \
                             float* grad);                                                    \
  double squared_error_##isa(const double* out, const double* target, int64_t n, double norm, \
                             double* grad);                                                   \
  void activation_backward_##isa(float* grad, const float* a, int64_t rows, int64_t c0,       \
                                 int64_t c1, int64_t cols, Activation act, float* bias_grad); \
  void activation_backward_##isa(double* grad, const double* a, int64_t rows, int64_t c0,     \
                                 int64_t c1, int64_t cols, Activation act, double* bias_grad);
TORCHEXT_DECLARE_PASSES(avx2)
TORCHEXT_DECLARE_PASSES(avx512)
#undef TORCHEXT_DECLARE_PASSES

// Whether the SIMD activation_backward handles `act` (GELU needs z and erf).
inline bool simd_activation_backward(Activation act) { return act != Activation::GELU; }

}  // namespace torchext::train::cpu
