// The AVX2+FMA+F16C build of the CPU kernel's spans (fused_sgd_simd.h), which
// fused_sgd.cpp calls where cpu_isa() allows it: 8 floats or 4 doubles per instruction.
#include "cpu/dispatch.h"

#if TORCHEXT_X86_SIMD

#define TORCHEXT_SGD_TARGET TORCHEXT_TARGET_AVX2
#define TORCHEXT_SIMD_VEC ::torchext::cpu::avx2
#define TORCHEXT_SGD_SPAN sgd_span_avx2

#include "cpu/vec_avx2.h"
#include "ops/cpu/fused_sgd_simd.h"

#endif  // TORCHEXT_X86_SIMD
