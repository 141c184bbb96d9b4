// The drivers of the tile GEMMs (gemm_tiles.h) for cpu_gemm.cpp: the whole of
// C on the tiles, unblocked (small layers) or blocked for the caches (large
// ones), split over torch's threads where each thread gets enough work
// (csrc/cpu/dispatch.h), and the transposes and per-thread buffers they need.
// Every element of C is one chain of multiply-adds over k, in order, whichever
// driver, blocking or thread count.
#pragma once

#include "cpu/dispatch.h"
#include "train/gemm_tiles.h"

#include <cstdint>
#include <vector>

namespace torchext::train::cpu {

// The whole of C, unblocked: each tile's k runs at once over A and B as they
// lie in memory. For operands that fit the caches. Call only where cpu_isa()
// is AVX2 or AVX-512, as `isa`.
template <typename T>
void run_tiles(torchext::cpu::Isa isa, const TileGemm<T>& g);

// Rows [r0, r1) × columns [c0, c1) of C, unblocked, on the calling thread (any
// bounds: a thread's share of C when the split is the caller's).
template <typename T>
void run_tiles_part(torchext::cpu::Isa isa, const TileGemm<T>& g, int64_t r0, int64_t r1,
                    int64_t c0, int64_t c1);

// The whole of C, blocked for the caches (tile_drivers.cpp says how), with
// B(p, j) = g.b[p * g.ldb + j * b_col], g.ldb or b_col 1: B need not be
// row-major (the forward pass passes W as Wᵀ). Same ISA condition.
template <typename T>
void run_blocked(torchext::cpu::Isa isa, const TileGemm<T>& g, int64_t b_col);

// dst [cols, rows] = srcᵀ, src [rows, cols], each with its own leading dimension.
template <typename T>
void transpose(const T* src, int64_t rows, int64_t cols, int64_t src_ld, T* dst, int64_t dst_ld);

// A per-thread scratch buffer of at least n elements; `Purpose` keeps apart
// buffers that are alive at the same time.
enum ScratchPurpose : int { kForwardScratch, kWeightGradientScratch, kPanelScratch };
template <typename T, int Purpose>
T* scratch(int64_t n) {
  thread_local std::vector<T> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace torchext::train::cpu
