// The AVX-512 (F/BW/VL/DQ) build of the CPU kernel's spans (fused_sgd_simd.h), which
// fused_sgd.cpp calls where cpu_isa() allows it: 16 floats or 8 doubles per instruction.
#include "cpu/dispatch.h"

#if TORCHEXT_X86_SIMD

#define TORCHEXT_SGD_TARGET TORCHEXT_TARGET_AVX512
#define TORCHEXT_SIMD_VEC ::torchext::cpu::avx512
#define TORCHEXT_SGD_SPAN sgd_span_avx512

#include "cpu/vec_avx512.h"
#include "ops/cpu/fused_sgd_simd.h"

#endif  // TORCHEXT_X86_SIMD
