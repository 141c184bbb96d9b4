// The tile kernels of gemm_tiles.h for one SIMD build. Included once by each
// build's file (cpu_kernels_avx2.cpp, cpu_kernels_avx512.cpp), which first
// defines
//   TORCHEXT_TILE_TARGET  the build's target attribute (csrc/cpu/dispatch.h)
//   TORCHEXT_SIMD_VEC     the namespace of its vector types (csrc/cpu/vec_*.h)
//   TORCHEXT_BUILD(name)  the names of its entry points (name_avx2, ...)
//   TORCHEXT_TILE_SHAPES  MR for NV = 1, 2, ...: the register tiles it uses
// The kernels live in an unnamed namespace: each build has its own.
#pragma once

#include "train/gemm_tiles.h"

#include <algorithm>
#include <array>
#include <utility>

#define TORCHEXT_TILE_INLINE TORCHEXT_TILE_TARGET inline __attribute__((always_inline))
#if defined(__clang__)
#define TORCHEXT_UNROLL _Pragma("unroll")
#else
#define TORCHEXT_UNROLL _Pragma("GCC unroll 16")
#endif

namespace torchext::train::cpu {
namespace {

namespace vec = TORCHEXT_SIMD_VEC;

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = vec::Float;
};
template <>
struct VecOf<double> {
  using type = vec::Double;
};

// MR (rows of a register tile) for NV vector columns, NV = 1 .. kMaxNV.
constexpr int kRowsOfTile[] = {TORCHEXT_TILE_SHAPES};
constexpr int kMaxNV = sizeof(kRowsOfTile) / sizeof(int);

// The epilogue of one vector of C (lanes masked by `mask` where partial).
template <class A>
TORCHEXT_TILE_INLINE typename A::V finish(const TileGemm<typename A::T>& g, typename A::V x,
                                          typename A::V bias, const typename A::T* out,
                                          typename A::Mask mask, bool partial) {
  using V = typename A::V;
  switch (g.epilogue) {
    case Epilogue::kStore: return x;
    case Epilogue::kBiasActivation:
      x = A::add(x, bias);
      return g.activation == Activation::ReLU ? A::relu(x) : x;
    case Epilogue::kActivationGradient: {
      if (g.activation == Activation::Identity) return x;
      const V a = partial ? A::load(out, mask) : A::load(out);
      const V one = A::set1(1);
      switch (g.activation) {
        case Activation::ReLU: return A::relu_grad(x, a);
        case Activation::Tanh: return A::mul(x, A::sub(one, A::mul(a, a)));  // tanh_backward
        case Activation::Sigmoid: return A::mul(A::mul(x, A::sub(one, a)), a);
        default: return x;
      }
    }
  }
  return x;
}

// One MR × NV tile of C at rows i0.., columns j0.. (cols of them, the last
// vector partial when cols < NV·W). kTransposedA: A's rows are adjacent in
// memory (a_row == 1, as in dZᵀ), so the MR values of one k sit side by side;
// else each row of A is walked through its own pointer.
template <class A, int MR, int NV, bool kTransposedA>
TORCHEXT_TILE_TARGET void tile(const TileGemm<typename A::T>& g, int64_t i0, int64_t j0,
                               int64_t cols) {
  using T = typename A::T;
  using V = typename A::V;
  constexpr int64_t W = A::kWidth;
  const bool partial = cols < NV * W;
  const typename A::Mask mask = A::first(cols - (NV - 1) * W);
  const int64_t k = g.k, ldb = g.ldb, a_col = g.a_col;
  V acc[MR][NV];
  TORCHEXT_UNROLL
  for (int r = 0; r < MR; ++r) {
    const T* c = g.c + (i0 + r) * g.ldc + j0;
    TORCHEXT_UNROLL
    for (int v = 0; v < NV; ++v) {
      const bool last = v == NV - 1 && partial;
      acc[r][v] = !g.accumulate ? A::zero() : last ? A::load(c + v * W, mask) : A::load(c + v * W);
    }
  }
  const T* a_rows[MR];
  TORCHEXT_UNROLL
  for (int r = 0; r < MR; ++r) a_rows[r] = g.a + (i0 + r) * g.a_row;
  const T* a = a_rows[0];
  const T* b = g.b + j0;
  for (int64_t p = 0; p < k; ++p, b += ldb) {
    V bv[NV];
    TORCHEXT_UNROLL
    for (int v = 0; v < NV; ++v) {
      bv[v] = v == NV - 1 && partial ? A::load(b + v * W, mask) : A::load(b + v * W);
    }
    TORCHEXT_UNROLL
    for (int r = 0; r < MR; ++r) {
      const V av = A::set1(kTransposedA ? a[p * a_col + r] : a_rows[r][p]);
      TORCHEXT_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = A::fmadd(av, bv[v], acc[r][v]);
    }
  }
  V bias[NV];
  TORCHEXT_UNROLL
  for (int v = 0; v < NV; ++v) {
    const bool last = v == NV - 1 && partial;
    bias[v] = g.bias == nullptr ? A::zero()
              : last            ? A::load(g.bias + j0 + v * W, mask)
                                : A::load(g.bias + j0 + v * W);
  }
  TORCHEXT_UNROLL
  for (int r = 0; r < MR; ++r) {
    T* c = g.c + (i0 + r) * g.ldc + j0;
    const T* out = g.out != nullptr ? g.out + (i0 + r) * g.ld_out + j0 : nullptr;
    TORCHEXT_UNROLL
    for (int v = 0; v < NV; ++v) {
      const bool last = v == NV - 1 && partial;
      const V x =
          finish<A>(g, acc[r][v], bias[v], out != nullptr ? out + v * W : nullptr, mask, last);
      if (last) {
        A::store(c + v * W, x, mask);
      } else {
        A::store(c + v * W, x);
      }
    }
  }
}

// tile<A, MR, NV, kTransposedA> for MR = 1 .. kRowsOfTile[NV - 1], indexed
// [NV - 1][MR - 1].
template <typename T>
using TileFn = void (*)(const TileGemm<T>&, int64_t, int64_t, int64_t);
constexpr int kMaxMR = *std::max_element(std::begin(kRowsOfTile), std::end(kRowsOfTile));

template <class A, bool kTransposedA, int NV, int... MRs>
constexpr std::array<TileFn<typename A::T>, kMaxMR> tiles_of_width(
    std::integer_sequence<int, MRs...>) {
  return {((MRs + 1) <= kRowsOfTile[NV - 1] ? &tile<A, MRs + 1, NV, kTransposedA> : nullptr)...};
}
template <class A, bool kTransposedA, int... NVs>
constexpr std::array<std::array<TileFn<typename A::T>, kMaxMR>, kMaxNV> tile_table(
    std::integer_sequence<int, NVs...>) {
  return {tiles_of_width<A, kTransposedA, NVs + 1>(std::make_integer_sequence<int, kMaxMR>())...};
}

template <typename T>
void tile_gemm(const TileGemm<T>& g, int64_t row_begin, int64_t row_end, int64_t col_begin,
               int64_t col_end) {
  using A = typename VecOf<T>::type;
  static constexpr auto kRowTiles = tile_table<A, false>(std::make_integer_sequence<int, kMaxNV>());
  static constexpr auto kColumnTiles =
      tile_table<A, true>(std::make_integer_sequence<int, kMaxNV>());
  const auto& tiles = g.a_row == 1 && g.m > 1 ? kColumnTiles : kRowTiles;
  constexpr int64_t kBlock = kMaxNV * A::kWidth;  // columns of the widest tile
  for (int64_t j0 = col_begin; j0 < col_end; j0 += kBlock) {
    const int64_t cols = std::min(kBlock, col_end - j0);
    const int nv = static_cast<int>((cols + A::kWidth - 1) / A::kWidth);
    const int64_t max_rows = kRowsOfTile[nv - 1];
    for (int64_t i0 = row_begin; i0 < row_end; i0 += max_rows) {
      const int64_t rows = std::min(max_rows, row_end - i0);
      tiles[nv - 1][rows - 1](g, i0, j0, cols);
    }
  }
}

}  // namespace

void TORCHEXT_BUILD(tile_gemm)(const TileGemm<float>& g, int64_t row_begin, int64_t row_end,
                               int64_t col_begin, int64_t col_end) {
  tile_gemm(g, row_begin, row_end, col_begin, col_end);
}
void TORCHEXT_BUILD(tile_gemm)(const TileGemm<double>& g, int64_t row_begin, int64_t row_end,
                               int64_t col_begin, int64_t col_end) {
  tile_gemm(g, row_begin, row_end, col_begin, col_end);
}

}  // namespace torchext::train::cpu
