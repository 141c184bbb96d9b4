// The AVX2+FMA build of the training core's tile GEMMs and SIMD passes
// (gemm_tiles_simd.h, passes_simd.h), which cpu_gemm.cpp and cpu_kernels.cpp
// call where cpu_isa() allows it.
#include "cpu/dispatch.h"

#if TORCHEXT_X86_SIMD

#define TORCHEXT_TILE_TARGET TORCHEXT_TARGET_AVX2
#define TORCHEXT_SIMD_VEC ::torchext::cpu::avx2
#define TORCHEXT_BUILD(name) name##_avx2
#define TORCHEXT_TILE_SHAPES 8, 6

#include "cpu/vec_avx2.h"
#include "train/gemm_tiles_simd.h"
#include "train/passes_simd.h"

#endif  // TORCHEXT_X86_SIMD
