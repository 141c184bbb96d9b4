// What the translation units of the CPU kernel of torchext::fused_sgd_ share:
// the span functions of each ISA build, which fused_sgd.cpp picks at run time
// (csrc/cpu/dispatch.h), and the float16/bfloat16 element kinds.
//
// A span function steps n consecutive elements in place: p, g (written only
// with grad_scale) and b (null without momentum; read only after the first
// step), with the update of csrc/ops/sgd_math.h. float32/float64 spans compute
// in their own type; float16/bfloat16 spans (raw 16-bit storage) in float32,
// rounded the way torch's "vector" or "scalar" elements round (see
// fused_sgd_reduced.h).
#pragma once

#include "cpu/dispatch.h"
#include "ops/sgd_math.h"

#include <cstdint>

namespace torchext::fused_sgd {

using sgd_math::Coeffs;
using sgd_math::StepArgs;

// Which 16-bit float type a span holds.
enum class Reduced { kHalf, kBFloat16 };

#if TORCHEXT_X86_SIMD
// AVX2+FMA+F16C builds (fused_sgd_avx2.cpp): call only where cpu_isa() >= kAvx2.
void sgd_span_avx2(float* p, float* g, float* b, int64_t n, bool first_step,
                   const Coeffs<float>& c);
void sgd_span_avx2(double* p, double* g, double* b, int64_t n, bool first_step,
                   const Coeffs<double>& c);
void sgd_span_avx2(Reduced dtype, uint16_t* p, uint16_t* g, uint16_t* b, int64_t n, bool first_step,
                   bool vector_semantics, const Coeffs<float>& c);

// AVX-512 builds (fused_sgd_avx512.cpp): call only where cpu_isa() == kAvx512.
void sgd_span_avx512(float* p, float* g, float* b, int64_t n, bool first_step,
                     const Coeffs<float>& c);
void sgd_span_avx512(double* p, double* g, double* b, int64_t n, bool first_step,
                     const Coeffs<double>& c);
void sgd_span_avx512(Reduced dtype, uint16_t* p, uint16_t* g, uint16_t* b, int64_t n,
                     bool first_step, bool vector_semantics, const Coeffs<float>& c);
#endif

}  // namespace torchext::fused_sgd
