// The training core's GEMMs (see cpu_gemm.h): which kernel takes each product
// (tiles, blocked tiles or BLAS), and the BLAS call.
#include "train/cpu_gemm.h"

#include "cpu/dispatch.h"
#include "train/cpu_kernels.h"
#include "train/gemm_tiles.h"
#include "train/tile_drivers.h"

#include <ATen/ATen.h>
#include <ATen/CPUFunctions.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>

// The Fortran BLAS entry points inside libtorch_cpu (MKL or OpenBLAS builds).
// Weak: a torch built without them leaves these null and gemm() goes through ATen.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace torchext::train::cpu {
namespace {

using torchext::cpu::Isa;

// ---------------------------------------------------------------------------
// BLAS.

template <typename T>
void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
               const T* alpha, const T* a, const int* lda, const T* b, const int* ldb,
               const T* beta, T* c, const int* ldc) {
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

template <typename T>
bool have_blas() {
  if constexpr (std::is_same_v<T, float>) return sgemm_ != nullptr;
  return dgemm_ != nullptr;
}

template <typename T>
at::Tensor view_of(const T* data, int64_t rows, int64_t cols, int64_t ld, bool transpose) {
  // A row-major [rows, cols] block with leading dimension ld, optionally transposed.
  at::Tensor t = at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1},
                               at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return transpose ? t.t() : t;
}

// ---------------------------------------------------------------------------
// Which kernel takes the products too large for the unblocked tiles.

bool is_amd_cpu() {
#if TORCHEXT_X86_SIMD
  __builtin_cpu_init();
  return __builtin_cpu_is("amd");
#else
  return false;
#endif
}

constexpr int kNoPin = -1;
std::atomic<int> pinned_large_gemm{kNoPin};

// ---------------------------------------------------------------------------
// Tiles.

// Multiply-adds up to which a GEMM runs on the tiles rather than through BLAS,
// and the widest weight they take: beyond these, BLAS's packing and cache
// blocking pay (measured against MKL on one AVX-512 Xeon core: the tiles win
// by up to a third on the small layers, the two are level near 128 × 256 × 256).
constexpr int64_t kTileMaxMacs = int64_t{1} << 22;
constexpr int64_t kTileMaxWidth = 1024;
// The most batch rows a weight gradient sums on the tiles (one chain of
// multiply-adds per element; BLAS blocks longer sums). Up to it, a long batch
// with a small weight stays on the tiles: MKL split such products along the
// batch over its threads and, on two cores, took longer than one core here.
constexpr int64_t kTileMaxDepth = 4096;
// The forward pass transposes W for the tiles: worth it for weights that stay
// in cache, and once a few rows share it.
constexpr int64_t kTileMaxWeight = int64_t{1} << 15;

int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether a product of a layer's weight [out, in] with `rows` batch rows (any of
// its three GEMMs) runs on the tiles.
bool use_tiles(Isa isa, int64_t rows, int64_t in, int64_t out) {
  return isa != Isa::kPortable && rows * in * out <= kTileMaxMacs && in <= kTileMaxWidth &&
         out <= kTileMaxWidth;
}

// The kernel of the products beyond use_tiles for the `isa` build (see
// large_gemm()).
LargeGemm large_gemm_for(Isa isa) {
  if (isa == Isa::kPortable) return LargeGemm::kBlas;
  const int pin = pinned_large_gemm.load(std::memory_order_relaxed);
  if (pin != kNoPin) return static_cast<LargeGemm>(pin);
  // The blocked tiles where they were measured faster than torch's MKL: on
  // AMD's Zen 4 with the AVX-512 build, 1.1-1.3x on whole steps with 256- to
  // 4096-wide layers (MKL reaches about 70 % of the FMA peak there); the AVX2
  // build's smaller tiles were level with MKL or 10 % slower. On Intel's Xeons
  // MKL was level with the unblocked tiles at 128 × 256 × 256 and faster
  // beyond; the blocked tiles are not measured there (benchmarks/RESULTS.md).
  static const bool amd = is_amd_cpu();
  return amd && isa == Isa::kAvx512 ? LargeGemm::kBlockedTiles : LargeGemm::kBlas;
}

// Whether the products beyond use_tiles run on the blocked tiles.
bool use_blocked_tiles(Isa isa) { return large_gemm_for(isa) == LargeGemm::kBlockedTiles; }

// Wᵀ [I, O] of weight [O, I], for the tiles, which read B by rows.
template <typename T>
const T* transposed(const T* weight, int64_t out, int64_t in) {
  T* t = scratch<T, kForwardScratch>(out * in);
  transpose(weight, out, in, in, t, out);
  return t;
}

// The lanes of one vector of the tiles, and the columns a row of C [.., n]
// costs them (whole vectors).
template <typename T>
int64_t tile_lanes(Isa isa) {
  return static_cast<int64_t>((isa == Isa::kAvx512 ? 64 : 32) / sizeof(T));
}
int64_t padded_columns(int64_t n, int64_t lanes) { return divup(n, lanes) * lanes; }

}  // namespace

LargeGemm large_gemm() { return large_gemm_for(torchext::cpu::cpu_isa()); }

void set_large_gemm(LargeGemm kernel) {
  pinned_large_gemm.store(static_cast<int>(kernel), std::memory_order_relaxed);
}

void reset_large_gemm() { pinned_large_gemm.store(kNoPin, std::memory_order_relaxed); }

bool epilogue_in_registers(Epilogue epilogue, Activation act) {
  switch (epilogue) {
    case Epilogue::kStore: return true;
    case Epilogue::kBiasActivation: return act == Activation::Identity || act == Activation::ReLU;
    case Epilogue::kActivationGradient: return act != Activation::GELU;
  }
  return false;
}

template <typename T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const T* a,
          int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    return;
  }
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (have_blas<T>() && std::max({m, n, k, lda, ldb, ldc}) <= kIntMax) {
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the
    // operands, keep the transposition flags.
    const char ta = transpose_b ? 'T' : 'N', tb = transpose_a ? 'T' : 'N';
    const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
    const int ilda = static_cast<int>(ldb), ildb = static_cast<int>(lda);
    const int ildc = static_cast<int>(ldc);
    const T one = 1, zero = 0;
    blas_gemm<T>(&ta, &tb, &im, &in, &ik, &one, b, &ilda, a, &ildb, &zero, c, &ildc);
    return;
  }
  at::Tensor out = view_of(c, m, n, ldc, false);
  at::cpu::mm_out(out, view_of(a, transpose_a ? k : m, transpose_a ? m : k, lda, transpose_a),
                  view_of(b, transpose_b ? n : k, transpose_b ? k : n, ldb, transpose_b));
}

template <typename T>
void dense_forward(const T* x, int64_t rows, int64_t in, const T* weight, int64_t out,
                   const T* bias, Activation act, T* z, T* a) {
  const Isa isa = torchext::cpu::cpu_isa();
  if (rows == 0 || out == 0) return;
  // Both tile paths need enough rows to pay for rearranging W (transposed, or
  // packed into panels). The blocked tiles beat MKL from 24 rows on Zen 4
  // (1024-1024-1024 at batch 24: 1.31x); fewer are not measured.
  const bool enough_rows = in > 0 && rows >= kTileRowSplit;
  const bool unblocked = enough_rows && in * out <= kTileMaxWeight && use_tiles(isa, rows, in, out);
  if (!unblocked && !(enough_rows && use_blocked_tiles(isa))) {
    gemm<T>(false, true, rows, out, in, x, in, weight, in, z, out);
    bias_activation<T>(z, bias, rows, out, act, a, Written::kByThreads);
    return;
  }
  TileGemm<T> g;
  g.m = rows, g.n = out, g.k = in;
  g.a = x, g.a_row = in, g.a_col = 1;
  g.c = z, g.ldc = out;
  g.epilogue = Epilogue::kBiasActivation;
  g.bias = bias;
  const bool in_registers = epilogue_in_registers(g.epilogue, act);
  g.activation = in_registers ? act : Activation::Identity;
  if (unblocked) {
    g.b = transposed(weight, out, in), g.ldb = out;
    run_tiles(isa, g);
  } else {
    g.b = weight, g.ldb = 1;  // Wᵀ, read by columns while packed
    run_blocked(isa, g, /*b_col=*/in);
  }
  if (!in_registers) {
    bias_activation<T>(z, nullptr, rows, out, act, a,
                       unblocked ? Written::kByCallingThread : Written::kByThreads);
  }
}

namespace {

// dW = dZᵀ · X on the unblocked tiles, or dWᵀ = Xᵀ · dZ into a per-thread
// buffer (transposed back into dW afterwards), whichever pads fewer lanes of
// the tiles' vectors by at least an eighth: with I = 20 and 16 lanes, dW's rows
// waste 12 of every 32, dWᵀ's (O = 30) 2. Either way each element is the same
// chain of multiply-adds over the batch, so the numbers are the same.
template <typename T>
struct WeightGradientTiles {
  TileGemm<T> g;
  bool by_transpose = false;
};

template <typename T>
WeightGradientTiles<T> weight_gradient_tiles(Isa isa, const T* dz, int64_t rows, int64_t out,
                                             const T* x, int64_t in, T* dw) {
  const int64_t lanes = tile_lanes<T>(isa);
  WeightGradientTiles<T> w;
  w.by_transpose = 8 * in * padded_columns(out, lanes) < 7 * out * padded_columns(in, lanes);
  TileGemm<T>& g = w.g;
  g.k = rows;
  if (w.by_transpose) {
    g.m = in, g.n = out;
    g.a = x, g.a_row = 1, g.a_col = in;  // Xᵀ
    g.b = dz, g.ldb = out;
    g.c = scratch<T, kWeightGradientScratch>(in * out), g.ldc = out;
  } else {
    g.m = out, g.n = in;
    g.a = dz, g.a_row = 1, g.a_col = out;  // dZᵀ
    g.b = x, g.ldb = in;
    g.c = dw, g.ldc = in;
  }
  return w;
}

bool weight_gradient_unblocked(Isa isa, int64_t rows, int64_t out, int64_t in) {
  return rows <= kTileMaxDepth && use_tiles(isa, rows, in, out);
}

}  // namespace

template <typename T>
void weight_gradient(const T* dz, int64_t rows, int64_t out, const T* x, int64_t in, T* dw) {
  const Isa isa = torchext::cpu::cpu_isa();
  const bool unblocked = weight_gradient_unblocked(isa, rows, out, in);
  if (rows == 0 || !(unblocked || use_blocked_tiles(isa))) {
    gemm<T>(true, false, out, in, rows, dz, out, x, in, dw, in);
    return;
  }
  if (!unblocked) {
    TileGemm<T> g;
    g.m = out, g.n = in, g.k = rows;
    g.a = dz, g.a_row = 1, g.a_col = out;  // dZᵀ
    g.b = x, g.ldb = in;
    g.c = dw, g.ldc = in;
    run_blocked(isa, g, /*b_col=*/1);
    return;
  }
  const WeightGradientTiles<T> w = weight_gradient_tiles(isa, dz, rows, out, x, in, dw);
  run_tiles(isa, w.g);
  if (w.by_transpose) transpose(w.g.c, in, out, out, dw, in);
}

template <typename T>
void weight_gradient_rows(const T* dz, int64_t rows, int64_t out, const T* x, int64_t in, T* dw,
                          int64_t o0, int64_t o1) {
  if (o0 >= o1) return;
  const Isa isa = torchext::cpu::cpu_isa();
  const WeightGradientTiles<T> w = weight_gradient_tiles(isa, dz, rows, out, x, in, dw);
  if (w.by_transpose) {  // rows [o0, o1) of dW are columns [o0, o1) of dWᵀ
    run_tiles_part(isa, w.g, 0, in, o0, o1);
    transpose(w.g.c + o0, in, o1 - o0, out, dw + o0 * in, in);
  } else {
    run_tiles_part(isa, w.g, o0, o1, 0, in);
  }
}

bool layer_on_unblocked_tiles(int64_t rows, int64_t in, int64_t out, Activation below_act) {
  const Isa isa = torchext::cpu::cpu_isa();
  return in > 0 && out > 0 && rows >= kTileRowSplit && in * out <= kTileMaxWeight &&
         use_tiles(isa, rows, in, out) && weight_gradient_unblocked(isa, rows, out, in) &&
         epilogue_in_registers(Epilogue::kActivationGradient, below_act);
}

template <typename T>
bool input_gradient(const T* dz, int64_t rows, int64_t out, const T* weight, int64_t in, T* dx,
                    Activation below_act, const T* below_a) {
  const Isa isa = torchext::cpu::cpu_isa();
  const bool unblocked = use_tiles(isa, rows, in, out);
  if (out == 0 || !epilogue_in_registers(Epilogue::kActivationGradient, below_act) ||
      !(unblocked || (rows >= kTileRowSplit && use_blocked_tiles(isa)))) {
    gemm<T>(false, false, rows, in, out, dz, out, weight, in, dx, in);
    return false;
  }
  TileGemm<T> g;
  g.m = rows, g.n = in, g.k = out;
  g.a = dz, g.a_row = out, g.a_col = 1;
  g.b = weight, g.ldb = in;
  g.c = dx, g.ldc = in;
  g.epilogue = Epilogue::kActivationGradient;
  g.activation = below_act;
  g.out = below_a, g.ld_out = in;
  if (unblocked) {
    run_tiles(isa, g);
  } else {
    run_blocked(isa, g, /*b_col=*/1);
  }
  return true;
}

#define TORCHEXT_INSTANTIATE(T)                                                                  \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, const T*, int64_t, const T*,      \
                        int64_t, T*, int64_t);                                                   \
  template void dense_forward<T>(const T*, int64_t, int64_t, const T*, int64_t, const T*,        \
                                 Activation, T*, T*);                                            \
  template void weight_gradient<T>(const T*, int64_t, int64_t, const T*, int64_t, T*);           \
  template void weight_gradient_rows<T>(const T*, int64_t, int64_t, const T*, int64_t, T*,       \
                                        int64_t, int64_t);                                       \
  template bool input_gradient<T>(const T*, int64_t, int64_t, const T*, int64_t, T*, Activation, \
                                  const T*);
TORCHEXT_INSTANTIATE(float)
TORCHEXT_INSTANTIATE(double)
#undef TORCHEXT_INSTANTIATE

}  // namespace torchext::train::cpu
