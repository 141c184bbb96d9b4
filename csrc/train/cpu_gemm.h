// The GEMMs of the training core's CPU step, each fused with the pass that
// follows it where that saves a trip through memory.
//
// Each call picks its kernel by size: the register-blocked tiles of
// gemm_tiles.h (AVX-512 or AVX2, as cpu_isa() allows) for small layers, where a
// BLAS call costs more in set-up than in arithmetic; for large ones, where
// packing and cache blocking pay, the vendor BLAS that torch links (MKL or
// OpenBLAS; ATen's mm where it has none) or, where they beat it (large_gemm()),
// the same tiles run over packed, cache-sized blocks. The tiles split over
// torch's threads only when each thread gets enough work
// (csrc/cpu/dispatch.h); BLAS threads itself.
// Legend: B batch rows, I in features, O out features; row-major buffers.
#pragma once

#include <torchext/activation_loss.h>

#include <cstdint>

namespace torchext::train::cpu {

// The kernel of the products too large for the unblocked tiles: the vendor
// BLAS, or the tiles blocked for the caches (packed panels of B, blocks of k).
// By default the blocked tiles on AMD CPUs running the AVX-512 build and BLAS
// elsewhere (cpu_gemm.cpp says why); the portable build always uses BLAS.
// Tests and benchmarks may pin either; the choice is read at every product.
enum class LargeGemm : int { kBlas = 0, kBlockedTiles = 1 };
// The kernel in use now, for cpu_isa()'s build.
LargeGemm large_gemm();
void set_large_gemm(LargeGemm kernel);
void reset_large_gemm();

// C[m, n] = op(A)[m, k] · op(B)[k, n], row-major, through BLAS (or ATen).
template <typename T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc);

// The forward pass of a dense layer: z = x · Wᵀ + bias, out = act(z).
// x [B, I], weight [O, I], bias [O] or null; z and out [B, O] (the same buffer
// unless act is GELU, whose backward needs z).
template <typename T>
void dense_forward(const T* x, int64_t rows, int64_t in, const T* weight, int64_t out,
                   const T* bias, Activation act, T* z, T* a);

// The weight gradient of a dense layer: dW [O, I] = dZᵀ · X, dZ [B, O], X [B, I].
template <typename T>
void weight_gradient(const T* dz, int64_t rows, int64_t out, const T* x, int64_t in, T* dw);

// Rows [o0, o1) of weight_gradient's dW, on the unblocked tiles and the
// calling thread: one team member's share (team.h), for layers that
// layer_on_unblocked_tiles accepts. The same numbers as weight_gradient.
template <typename T>
void weight_gradient_rows(const T* dz, int64_t rows, int64_t out, const T* x, int64_t in, T* dw,
                          int64_t o0, int64_t o1);

// Whether all three products of a layer [out, in] over `rows` batch rows, and
// over any share of them of at least kTileRowSplit rows, run on the unblocked
// tiles on the calling thread, the input gradient with the derivative of the
// layer below (below_act) in its epilogue: the condition for splitting a step
// over a team, whose members call these functions on their shares.
bool layer_on_unblocked_tiles(int64_t rows, int64_t in, int64_t out, Activation below_act);

// The input gradient of a dense layer, dX [B, I] = dZ · W (W [O, I]), turned
// into the layer below's dZ = dX ⊙ act'(below_a) in the same pass where that
// layer's activation allows it (below_a: its output, [B, I]). Returns whether
// the derivative was applied (by the tiles); if not, BLAS wrote dX and left the
// derivative for activation_backward.
template <typename T>
bool input_gradient(const T* dz, int64_t rows, int64_t out, const T* weight, int64_t in, T* dx,
                    Activation below_act, const T* below_a);

}  // namespace torchext::train::cpu
