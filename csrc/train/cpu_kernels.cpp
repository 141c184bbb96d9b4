// Fused CPU kernels of the training-loop core (see cpu_kernels.h).
//
// Elementwise passes run over rows with at::parallel_for (inline for small
// blocks, where a thread hand-off costs more than the work); the bias-gradient
// reduction splits over columns so every thread owns its sums (deterministic).
// Formulas follow ATen's kernels (threshold/tanh/sigmoid/gelu backward,
// mse_loss, log_softmax + nll_loss) so results match stock PyTorch.
#include "train/cpu_kernels.h"

#include <ATen/ATen.h>
#include <ATen/CPUFunctions.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

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

// Below this many elements a pass runs on the calling thread: handing work to
// another thread costs more than doing it.
constexpr int64_t kElementsPerTask = 32768;

int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(cols, 1));
}

template <typename T>
void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
               const T* alpha, const T* a, const int* lda, const T* b, const int* ldb,
               const T* beta, T* c, const int* ldc);
template <>
void blas_gemm<float>(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                      const float* alpha, const float* a, const int* lda, const float* b,
                      const int* ldb, const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
template <>
void blas_gemm<double>(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                       const double* alpha, const double* a, const int* lda, const double* b,
                       const int* ldb, const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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

}  // namespace

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

// ---------------------------------------------------------------------------
// Elementwise passes.
//
// Each pass is written once, as an always-inline block function over plain
// loops, and compiled twice: for the baseline ISA, and (on x86-64) inside
// functions targeted at AVX2+FMA, picked at run time. The extension is built
// without -mavx2 so that it runs anywhere; this keeps the hot loops 8 floats
// wide where the CPU allows. Only leaf loops get the target attribute, so no
// inline function shared with other translation units is compiled for AVX2.

namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TORCHEXT_HAVE_AVX2_VARIANT 1
#define TORCHEXT_AVX2 __attribute__((target("avx2,fma")))
#endif
#define TORCHEXT_INLINE inline __attribute__((always_inline))

bool cpu_has_avx2() {
#ifdef TORCHEXT_HAVE_AVX2_VARIANT
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

template <typename T>
TORCHEXT_INLINE T gelu(T z) {
  return z * T(0.5) * (T(1) + std::erf(z * T(M_SQRT1_2)));
}

template <typename T>
TORCHEXT_INLINE T gelu_derivative(T z) {  // as gelu_backward, so inf and NaN give what it gives
  const T cdf = T(0.5) * (T(1) + std::erf(z * T(M_SQRT1_2)));
  const T pdf = T(M_2_SQRTPI * M_SQRT1_2 * 0.5) * std::exp(z * z * T(-0.5));
  return cdf + z * pdf;
}

// Rows [begin, end) of bias + activation.
template <typename T>
TORCHEXT_INLINE void bias_activation_rows(T* z, const T* bias, int64_t begin, int64_t end,
                                          int64_t cols, Activation act, T* out) {
  for (int64_t r = begin; r < end; ++r) {
    T* __restrict zr = z + r * cols;
    if (bias != nullptr) {
      const T* __restrict b = bias;
      for (int64_t c = 0; c < cols; ++c) zr[c] += b[c];
    }
    if (act == Activation::Identity) {
      if (out != z) std::copy(zr, zr + cols, out + r * cols);
      continue;
    }
    // out may be z itself (in place), so no __restrict across the two.
    T* outr = out + r * cols;
    switch (act) {
      case Activation::ReLU:  // as torch.relu: NaN stays NaN, -0.0 stays -0.0
        for (int64_t c = 0; c < cols; ++c) outr[c] = zr[c] < T(0) ? T(0) : zr[c];
        break;
      case Activation::Tanh:
        for (int64_t c = 0; c < cols; ++c) outr[c] = std::tanh(zr[c]);
        break;
      case Activation::Sigmoid:
        for (int64_t c = 0; c < cols; ++c) outr[c] = T(1) / (T(1) + std::exp(-zr[c]));
        break;
      case Activation::GELU:
        for (int64_t c = 0; c < cols; ++c) outr[c] = gelu(zr[c]);
        break;
      case Activation::Identity: break;
    }
  }
}

// Columns [c0, c1) of the activation gradient, over all rows, and their bias-gradient sums.
template <typename T>
TORCHEXT_INLINE void activation_backward_cols(T* grad, const T* z, const T* a, int64_t rows,
                                              int64_t c0, int64_t c1, int64_t cols, Activation act,
                                              T* bias_grad) {
  if (bias_grad != nullptr) std::fill(bias_grad + c0, bias_grad + c1, T(0));
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict g = grad + r * cols;
    const T* __restrict zr = z + r * cols;
    const T* __restrict ar = a + r * cols;
    switch (act) {
      case Activation::Identity: break;
      case Activation::ReLU:  // as threshold_backward(grad, output, 0)
        for (int64_t c = c0; c < c1; ++c) g[c] = ar[c] <= T(0) ? T(0) : g[c];
        break;
      case Activation::Tanh:  // tanh_backward: grad · (1 − a²)
        for (int64_t c = c0; c < c1; ++c) g[c] = g[c] * (T(1) - ar[c] * ar[c]);
        break;
      case Activation::Sigmoid:  // sigmoid_backward: grad · (1 − a) · a
        for (int64_t c = c0; c < c1; ++c) g[c] = g[c] * (T(1) - ar[c]) * ar[c];
        break;
      case Activation::GELU:
        for (int64_t c = c0; c < c1; ++c) g[c] = g[c] * gelu_derivative(zr[c]);
        break;
    }
    if (bias_grad != nullptr) {
      T* __restrict bg = bias_grad;
      for (int64_t c = c0; c < c1; ++c) bg[c] += g[c];
    }
  }
}

// Σ (out − target)² in double, with grad = norm · (out − target) when asked.
// Eight independent partial sums let the loop run in vector lanes.
template <typename T>
TORCHEXT_INLINE double squared_error(const T* __restrict out, const T* __restrict target, int64_t n,
                                     T norm, T* __restrict grad) {
  double partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) {
      const T diff = out[i + k] - target[i + k];
      partial[k] += static_cast<double>(diff) * static_cast<double>(diff);
      if (grad != nullptr) grad[i + k] = norm * diff;
    }
  }
  double sum = 0;
  for (; i < n; ++i) {
    const T diff = out[i] - target[i];
    sum += static_cast<double>(diff) * static_cast<double>(diff);
    if (grad != nullptr) grad[i] = norm * diff;
  }
  for (double p : partial) sum += p;
  return sum;
}

// The baseline and AVX2 instantiations of each block function.
template <typename T>
void bias_activation_block(T* z, const T* bias, int64_t begin, int64_t end, int64_t cols,
                           Activation act, T* out) {
  bias_activation_rows(z, bias, begin, end, cols, act, out);
}
template <typename T>
void activation_backward_block(T* grad, const T* z, const T* a, int64_t rows, int64_t c0,
                               int64_t c1, int64_t cols, Activation act, T* bias_grad) {
  activation_backward_cols(grad, z, a, rows, c0, c1, cols, act, bias_grad);
}
template <typename T>
double squared_error_block(const T* out, const T* target, int64_t n, T norm, T* grad) {
  return squared_error(out, target, n, norm, grad);
}
#ifdef TORCHEXT_HAVE_AVX2_VARIANT
template <typename T>
TORCHEXT_AVX2 void bias_activation_block_avx2(T* z, const T* bias, int64_t begin, int64_t end,
                                              int64_t cols, Activation act, T* out) {
  bias_activation_rows(z, bias, begin, end, cols, act, out);
}
template <typename T>
TORCHEXT_AVX2 void activation_backward_block_avx2(T* grad, const T* z, const T* a, int64_t rows,
                                                  int64_t c0, int64_t c1, int64_t cols,
                                                  Activation act, T* bias_grad) {
  activation_backward_cols(grad, z, a, rows, c0, c1, cols, act, bias_grad);
}
template <typename T>
TORCHEXT_AVX2 double squared_error_block_avx2(const T* out, const T* target, int64_t n, T norm,
                                              T* grad) {
  return squared_error(out, target, n, norm, grad);
}
#define TORCHEXT_PICK(name) (cpu_has_avx2() ? name##_avx2<T> : name<T>)
#else
#define TORCHEXT_PICK(name) (name<T>)
#endif

}  // namespace

template <typename T>
void bias_activation(T* z, const T* bias, int64_t rows, int64_t cols, Activation act, T* out) {
  const auto block = TORCHEXT_PICK(bias_activation_block);
  at::parallel_for(0, rows, row_grain(cols),
                   [&](int64_t begin, int64_t end) { block(z, bias, begin, end, cols, act, out); });
}

template <typename T>
void activation_backward(T* grad, const T* z, const T* a, int64_t rows, int64_t cols,
                         Activation act, T* bias_grad) {
  // Columns split across threads: each owns its slice of bias_grad.
  const auto block = TORCHEXT_PICK(activation_backward_block);
  const int64_t col_grain = std::max<int64_t>(8, kElementsPerTask / std::max<int64_t>(rows, 1));
  at::parallel_for(0, cols, col_grain, [&](int64_t c0, int64_t c1) {
    block(grad, z, a, rows, c0, c1, cols, act, bias_grad);
  });
}

// ---------------------------------------------------------------------------
// Losses (mean reduction).
//
// Sums run in double for accuracy. torch sums a float32 loss in float32, where a
// sum beyond the float range is already infinite before the division by the
// count; the_mean() keeps that, so an overflowing loss is inf here too.

template <typename T>
T the_mean(double sum, int64_t n) {
  if (std::abs(sum) > static_cast<double>(std::numeric_limits<T>::max())) {
    return static_cast<T>(sum > 0 ? std::numeric_limits<T>::infinity()
                                  : -std::numeric_limits<T>::infinity());
  }
  return static_cast<T>(sum / static_cast<double>(n));
}

template <typename T>
T mse_loss(const T* out, const T* target, int64_t n, T* grad) {
  if (n == 0) return std::numeric_limits<T>::quiet_NaN();  // as torch: mean of nothing
  const T norm = T(2) / static_cast<T>(n);                 // mse_loss_backward's scale
  const double sum = TORCHEXT_PICK(squared_error_block)(out, target, n, norm, grad);
  return the_mean<T>(sum, n);
}
#undef TORCHEXT_PICK

template <typename T>
T cross_entropy_loss(const T* logits, const int64_t* target, int64_t rows, int64_t cols, T* grad) {
  if (rows == 0) return std::numeric_limits<T>::quiet_NaN();
  const T inv_rows = T(1) / static_cast<T>(rows);
  double sum = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * cols;
    const T max = *std::max_element(x, x + cols);
    T exp_sum = 0;
    for (int64_t c = 0; c < cols; ++c) exp_sum += std::exp(x[c] - max);
    const T log_sum = std::log(exp_sum);
    // log_softmax(x)[t] = x[t] − max − log Σ exp(x − max); nll = −log_softmax[t].
    sum -= static_cast<double>(x[target[r]] - max - log_sum);
    if (grad != nullptr) {
      T* g = grad + r * cols;
      for (int64_t c = 0; c < cols; ++c) g[c] = std::exp(x[c] - max - log_sum) * inv_rows;
      g[target[r]] -= inv_rows;
    }
  }
  return the_mean<T>(sum, rows);
}

#define TORCHEXT_INSTANTIATE(T)                                                             \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, const T*, int64_t, const T*, \
                        int64_t, T*, int64_t);                                              \
  template void bias_activation<T>(T*, const T*, int64_t, int64_t, Activation, T*);         \
  template T mse_loss<T>(const T*, const T*, int64_t, T*);                                  \
  template T cross_entropy_loss<T>(const T*, const int64_t*, int64_t, int64_t, T*);         \
  template void activation_backward<T>(T*, const T*, const T*, int64_t, int64_t, Activation, T*);
TORCHEXT_INSTANTIATE(float)
TORCHEXT_INSTANTIATE(double)
#undef TORCHEXT_INSTANTIATE

}  // namespace torchext::train::cpu
