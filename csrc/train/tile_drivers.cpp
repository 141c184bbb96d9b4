// The tile GEMMs' drivers (see tile_drivers.h): unblocked for operands that
// fit the caches, blocked for larger ones.
#include "train/tile_drivers.h"

#if TORCHEXT_X86_SIMD
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <type_traits>

namespace torchext::train::cpu {
namespace {

using torchext::cpu::Isa;

int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
void tile_gemm(Isa isa, const TileGemm<T>& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
#if TORCHEXT_X86_SIMD
  if (isa == Isa::kAvx512) {
    tile_gemm_avx512(g, r0, r1, c0, c1);
  } else {
    tile_gemm_avx2(g, r0, r1, c0, c1);
  }
#endif
}

// dst[c * dst_ld + r] = src[r * src_ld + c] for every element outside the
// block r < r0, c < c0 (which the caller transposed already).
template <typename T>
void transpose_rest(const T* src, int64_t rows, int64_t cols, int64_t src_ld, int64_t r0,
                    int64_t c0, T* dst, int64_t dst_ld) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = r < r0 ? c0 : 0; c < cols; ++c) dst[c * dst_ld + r] = src[r * src_ld + c];
  }
}

// ---------------------------------------------------------------------------
// Blocked tiles, for products larger than the caches.
//
// As a BLAS does: k in blocks of kDepthBlock, and each block's rows of B packed
// into panels of kPanelWidth columns, each panel contiguous, so a tile streams
// one panel from L1/L2 rather than rows kilobytes apart (rows a multiple of
// 4 KB apart fall in one set of a 32 KB, 8-way L1); C's rows in blocks of
// kRowBlock, so that A's block stays in L2 while every panel passes it. Each
// block of k continues C's sums (TileGemm::accumulate) and the epilogue runs
// after the last, so each element of C is still one chain of multiply-adds
// over k, in order: the same numbers as the unblocked tiles, at any thread
// count.
constexpr int64_t kPanelWidth = kTileColumnSplit;
// A panel of B is 128 KB (in L2), a block of A 192 rows × kDepthBlock. On
// Zen 4, depths of 512 floats took up to 10 % less time than 128 or 256 on a
// 1024-2048-1024 step (512 to 1024 were level); row blocks of 48 to 768 were
// level within the noise.
template <typename T>
constexpr int64_t kDepthBlock = 2048 / sizeof(T);
constexpr int64_t kRowBlock = 8 * kTileRowSplit;

// Rows [k0, k0 + depth) of B, columns of panels [panel_begin, panel_end), packed
// panel after panel, each [depth, kPanelWidth]. B(p, j) = b[p * b_row + j * b_col]
// with b_row or b_col 1.
template <typename T>
void pack_panels(const T* b, int64_t b_row, int64_t b_col, int64_t n, int64_t k0, int64_t depth,
                 int64_t panel_begin, int64_t panel_end, T* packed) {
  for (int64_t q = panel_begin; q < panel_end; ++q) {
    const int64_t c0 = q * kPanelWidth, width = std::min(kPanelWidth, n - c0);
    const T* src = b + k0 * b_row + c0 * b_col;
    T* dst = packed + (q - panel_begin) * depth * kPanelWidth;
    if (b_col == 1) {
      for (int64_t p = 0; p < depth; ++p)
        std::copy_n(src + p * b_row, width, dst + p * kPanelWidth);
    } else {  // B's columns are contiguous (B = Wᵀ)
      transpose(src, width, depth, b_col, dst, kPanelWidth);
    }
  }
}

// Rows [r0, r1) × the columns of panels [q0, q1) of C, blocked (see above).
template <typename T>
void blocked_part(Isa isa, const TileGemm<T>& g, int64_t b_col, int64_t r0, int64_t r1, int64_t q0,
                  int64_t q1) {
  const int64_t depth_block = std::min(kDepthBlock<T>, g.k);
  T* packed = scratch<T, kPanelScratch>(depth_block * (q1 - q0) * kPanelWidth);
  for (int64_t k0 = 0; k0 < g.k; k0 += depth_block) {
    const int64_t depth = std::min(depth_block, g.k - k0);
    pack_panels(g.b, g.ldb, b_col, g.n, k0, depth, q0, q1, packed);
    for (int64_t i0 = r0; i0 < r1; i0 += kRowBlock) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c0 = q * kPanelWidth;
        TileGemm<T> block = g;
        block.n = std::min(kPanelWidth, g.n - c0), block.k = depth;
        block.a = g.a + k0 * g.a_col;
        block.b = packed + (q - q0) * depth * kPanelWidth, block.ldb = kPanelWidth;
        block.c = g.c + c0;
        block.accumulate = g.accumulate || k0 > 0;
        if (k0 + depth < g.k) block.epilogue = Epilogue::kStore;
        if (block.bias != nullptr) block.bias += c0;
        if (block.out != nullptr) block.out += c0;
        tile_gemm(isa, block, i0, std::min(i0 + kRowBlock, r1), 0, block.n);
      }
    }
  }
}

}  // namespace

// Split over threads in pieces of kTileRowSplit rows × kTileColumnSplit
// columns when each thread gets kMinMacsPerThread.
template <typename T>
void run_tiles(Isa isa, const TileGemm<T>& g) {
  const int64_t row_pieces = divup(g.m, kTileRowSplit), col_pieces = divup(g.n, kTileColumnSplit);
  const int64_t threads =
      torchext::cpu::threads_for(g.m * g.n * g.k, torchext::cpu::kMinMacsPerThread);
  if (threads < 2) return tile_gemm(isa, g, 0, g.m, 0, g.n);
  torchext::cpu::parallel_items(row_pieces * col_pieces, threads, [&](int64_t piece) {
    const int64_t r0 = piece / col_pieces * kTileRowSplit;
    const int64_t c0 = piece % col_pieces * kTileColumnSplit;
    tile_gemm(isa, g, r0, std::min(g.m, r0 + kTileRowSplit), c0,
              std::min(g.n, c0 + kTileColumnSplit));
  });
}

template <typename T>
void run_tiles_part(Isa isa, const TileGemm<T>& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  tile_gemm(isa, g, r0, r1, c0, c1);
}

// The whole of C through the blocked tiles, B(p, j) = g.b[p * g.ldb + j * b_col].
// Threads take whole panels where there are enough (each packs only its own),
// else blocks of rows (each packs every panel).
template <typename T>
void run_blocked(Isa isa, const TileGemm<T>& g, int64_t b_col) {
  const int64_t panels = divup(g.n, kPanelWidth);
  const int64_t threads =
      torchext::cpu::threads_for(g.m * g.n * g.k, torchext::cpu::kMinMacsPerThread);
  if (threads < 2) return blocked_part(isa, g, b_col, 0, g.m, 0, panels);
  const int64_t row_pieces = divup(g.m, kTileRowSplit);
  const bool by_panels = panels >= 2 * threads;
  torchext::cpu::parallel_items(threads, threads, [&](int64_t t) {
    if (by_panels) {
      blocked_part(isa, g, b_col, 0, g.m, panels * t / threads, panels * (t + 1) / threads);
    } else {
      const int64_t r0 = row_pieces * t / threads * kTileRowSplit;
      const int64_t r1 = std::min(g.m, row_pieces * (t + 1) / threads * kTileRowSplit);
      blocked_part(isa, g, b_col, r0, r1, 0, panels);
    }
  });
}

// The small layers transpose a weight (or a weight gradient) every step, and
// the blocked tiles pack Wᵀ, so float ones go 4 × 4 blocks at a time through
// SSE registers (part of the x86-64 baseline): a quarter of the instructions of
// the scalar loop.
template <typename T>
void transpose(const T* src, int64_t rows, int64_t cols, int64_t src_ld, T* dst, int64_t dst_ld) {
  int64_t r0 = 0, c0 = 0;  // the block transposed by whole 4 × 4 tiles
#if TORCHEXT_X86_SIMD
  if constexpr (std::is_same_v<T, float>) {
    r0 = rows / 4 * 4, c0 = cols / 4 * 4;
    for (int64_t r = 0; r < r0; r += 4) {
      for (int64_t c = 0; c < c0; c += 4) {
        const float* s = src + r * src_ld + c;
        __m128 v0 = _mm_loadu_ps(s), v1 = _mm_loadu_ps(s + src_ld);
        __m128 v2 = _mm_loadu_ps(s + 2 * src_ld), v3 = _mm_loadu_ps(s + 3 * src_ld);
        _MM_TRANSPOSE4_PS(v0, v1, v2, v3);
        float* d = dst + c * dst_ld + r;
        _mm_storeu_ps(d, v0);
        _mm_storeu_ps(d + dst_ld, v1);
        _mm_storeu_ps(d + 2 * dst_ld, v2);
        _mm_storeu_ps(d + 3 * dst_ld, v3);
      }
    }
  }
#endif
  transpose_rest(src, rows, cols, src_ld, r0, c0, dst, dst_ld);
}

#define TORCHEXT_INSTANTIATE(T)                                                                 \
  template void run_tiles<T>(Isa, const TileGemm<T>&);                                          \
  template void run_tiles_part<T>(Isa, const TileGemm<T>&, int64_t, int64_t, int64_t, int64_t); \
  template void run_blocked<T>(Isa, const TileGemm<T>&, int64_t);                               \
  template void transpose<T>(const T*, int64_t, int64_t, int64_t, T*, int64_t);
TORCHEXT_INSTANTIATE(float)
TORCHEXT_INSTANTIATE(double)
#undef TORCHEXT_INSTANTIATE

}  // namespace torchext::train::cpu
