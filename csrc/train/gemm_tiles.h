// Register-blocked GEMMs for the small layers of the training core, with the
// passes that follow a GEMM fused into its epilogue.
//
// For the layer sizes of small MLPs (tens to a few hundred features), a BLAS
// call spends as long deciding, packing and dispatching as multiplying. These
// kernels multiply in place, unpacked: an MR × (NV·W) tile of C is held in
// vector registers (W lanes per register) while k runs, each step one vector
// load of B's row per register column and one broadcast of A per row, then the
// epilogue finishes the tile in registers (bias and ReLU in the forward pass,
// the activation's derivative in the backward pass) and stores it once.
// Each element of C is one chain of fused multiply-adds over k, in order, the
// epilogue's operations after it: the same numbers whatever the tiling, the
// thread split or the SIMD build (AVX2 or AVX-512).
//
// Legend: C[m, n] = A(m, k) · B[k, n]; A is read through two strides, so it
// may be a transposed view (dW = dZᵀ · X), B and C are row-major.
#pragma once

#include <torchext/activation_loss.h>

#include <cstdint>

namespace torchext::train::cpu {

// What happens to a tile of C before it is stored.
enum class Epilogue {
  kStore,               // C = A·B
  kBiasActivation,      // C = act(A·B + bias): forward, act Identity or ReLU
  kActivationGradient,  // C = A·B ⊙ act'(out): backward, from the activation's output
};

template <typename T>
struct TileGemm {
  int64_t m = 0, n = 0, k = 0;
  const T* a = nullptr;  // A(i, p) = a[i * a_row + p * a_col]
  int64_t a_row = 0, a_col = 0;
  const T* b = nullptr;  // B(p, j) = b[p * ldb + j]
  int64_t ldb = 0;
  T* c = nullptr;  // C(i, j) = c[i * ldc + j]
  int64_t ldc = 0;
  // Whether the sums continue from C's values (the next block of k of a
  // product split along k) rather than from zero.
  bool accumulate = false;
  Epilogue epilogue = Epilogue::kStore;
  Activation activation = Activation::Identity;
  const T* bias = nullptr;  // kBiasActivation: [n], or null
  const T* out = nullptr;   // kActivationGradient: the activation's output, out(i, j)
  int64_t ld_out = 0;       // = out[i * ld_out + j]
};

// Whether an epilogue runs in registers for `act` (else the caller finishes
// the tile with the elementwise passes of cpu_kernels.h).
bool epilogue_in_registers(Epilogue epilogue, Activation act);

// Pieces of C that threads may share: rows in multiples of kTileRowSplit,
// columns in multiples of kTileColumnSplit (whole tiles of every build).
constexpr int64_t kTileRowSplit = 24;
constexpr int64_t kTileColumnSplit = 64;

// Rows [row_begin, row_end) × columns [col_begin, col_end) of C with one ISA
// build (call only where cpu_isa() allows it).
void tile_gemm_avx512(const TileGemm<float>& g, int64_t row_begin, int64_t row_end,
                      int64_t col_begin, int64_t col_end);
void tile_gemm_avx512(const TileGemm<double>& g, int64_t row_begin, int64_t row_end,
                      int64_t col_begin, int64_t col_end);
void tile_gemm_avx2(const TileGemm<float>& g, int64_t row_begin, int64_t row_end, int64_t col_begin,
                    int64_t col_end);
void tile_gemm_avx2(const TileGemm<double>& g, int64_t row_begin, int64_t row_end,
                    int64_t col_begin, int64_t col_end);

}  // namespace torchext::train::cpu
