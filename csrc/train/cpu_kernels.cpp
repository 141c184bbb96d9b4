// Fused CPU kernels of the training-loop core (see cpu_kernels.h).
//
// Elementwise passes run over rows on torch's threads when they are large
// enough to pay for them (csrc/cpu/dispatch.h); the bias-gradient reduction
// splits over columns so every thread owns its sums (deterministic). Formulas
// follow ATen's kernels (threshold/tanh/sigmoid/gelu backward, mse_loss,
// log_softmax + nll_loss) so results match stock PyTorch.
#include "train/cpu_kernels.h"

#include "cpu/dispatch.h"
#include "train/passes.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace torchext::train::cpu {

// ---------------------------------------------------------------------------
// Elementwise passes.
//
// Each pass is written once, as an always-inline block function over plain
// loops, and compiled three times: for the baseline ISA, and (on x86-64) inside
// functions targeted at AVX2+FMA and at AVX-512, which cpu_isa() picks at run
// time; the compiler vectorises the loops for each. Only leaf loops get the
// target attribute, so no inline function shared with other translation units
// is compiled for AVX2 or AVX-512.

namespace {

#define TORCHEXT_INLINE inline __attribute__((always_inline))

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
TORCHEXT_INLINE void bias_activation_block_body(T* z, const T* bias, int64_t begin, int64_t end,
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
TORCHEXT_INLINE void activation_backward_block_body(T* grad, const T* z, const T* a, int64_t rows,
                                                    int64_t c0, int64_t c1, int64_t cols,
                                                    Activation act, T* bias_grad) {
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

// Σ (out − target)² in double, with grad = norm · (out − target) when asked
// (the portable build; passes_simd.h has the others).
template <typename T>
double squared_error_portable(const T* __restrict out, const T* __restrict target, int64_t n,
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

// Each block function in its three builds: NAME (baseline), NAME_avx2 and
// NAME_avx512, and pick_NAME<T>(), the one cpu_isa() selects. (The passes that
// vectorise poorly this way have SIMD builds of their own: passes_simd.h.)
#define TORCHEXT_PORTABLE_BUILD(name, ret, params, args) \
  template <typename T>                                  \
  ret name params {                                      \
    return name##_body args;                             \
  }
#if TORCHEXT_X86_SIMD
#define TORCHEXT_BUILDS(name, ret, params, args)                  \
  TORCHEXT_PORTABLE_BUILD(name, ret, params, args)                \
  template <typename T>                                           \
  TORCHEXT_TARGET_AVX2 ret name##_avx2 params {                   \
    return name##_body args;                                      \
  }                                                               \
  template <typename T>                                           \
  TORCHEXT_TARGET_AVX512 ret name##_avx512 params {               \
    return name##_body args;                                      \
  }                                                               \
  template <typename T>                                           \
  auto pick_##name() {                                            \
    switch (torchext::cpu::cpu_isa()) {                           \
      case torchext::cpu::Isa::kAvx512: return &name##_avx512<T>; \
      case torchext::cpu::Isa::kAvx2: return &name##_avx2<T>;     \
      case torchext::cpu::Isa::kPortable: break;                  \
    }                                                             \
    return &name<T>;                                              \
  }
#else
#define TORCHEXT_BUILDS(name, ret, params, args)   \
  TORCHEXT_PORTABLE_BUILD(name, ret, params, args) \
  template <typename T>                            \
  auto pick_##name() {                             \
    return &name<T>;                               \
  }
#endif

TORCHEXT_BUILDS(bias_activation_block, void,
                (T * z, const T* bias, int64_t begin, int64_t end, int64_t cols, Activation act,
                 T* out),
                (z, bias, begin, end, cols, act, out))
TORCHEXT_BUILDS(activation_backward_block, void,
                (T * grad, const T* z, const T* a, int64_t rows, int64_t c0, int64_t c1,
                 int64_t cols, Activation act, T* bias_grad),
                (grad, z, a, rows, c0, c1, cols, act, bias_grad))
#undef TORCHEXT_BUILDS
#undef TORCHEXT_PORTABLE_BUILD

using torchext::cpu::Isa;

// The cost of an element of an activation pass, relative to an addition: the
// transcendental ones call into libm.
int64_t cost_of(Activation act) {
  return act == Activation::Identity || act == Activation::ReLU ? 1 : 16;
}

int64_t min_elements_per_thread(Written written) {
  return written == Written::kByThreads ? torchext::cpu::kMinElementsPerThread
                                        : torchext::cpu::kMinPassElementsPerThread;
}

}  // namespace

template <typename T>
void bias_activation(T* z, const T* bias, int64_t rows, int64_t cols, Activation act, T* out,
                     Written written) {
  const auto block = pick_bias_activation_block<T>();
  torchext::cpu::parallel_for(
      0, rows, cols * cost_of(act), min_elements_per_thread(written),
      [&](int64_t begin, int64_t end) { block(z, bias, begin, end, cols, act, out); });
}

template <typename T>
void activation_backward_columns(T* grad, const T* z, const T* a, int64_t rows, int64_t cols,
                                 int64_t c0, int64_t c1, Activation act, T* bias_grad) {
  const Isa isa = torchext::cpu::cpu_isa();
#if TORCHEXT_X86_SIMD
  if (isa != Isa::kPortable && simd_activation_backward(act)) {
    if (isa == Isa::kAvx512) {
      return activation_backward_avx512(grad, a, rows, c0, c1, cols, act, bias_grad);
    }
    return activation_backward_avx2(grad, a, rows, c0, c1, cols, act, bias_grad);
  }
#endif
  pick_activation_backward_block<T>()(grad, z, a, rows, c0, c1, cols, act, bias_grad);
}

template <typename T>
void activation_backward(T* grad, const T* z, const T* a, int64_t rows, int64_t cols,
                         Activation act, T* bias_grad, Written written) {
  // Columns split across threads in whole cache lines: each owns its slice of bias_grad.
  constexpr int64_t kLine = kColumnsOfLine<T>;
  torchext::cpu::parallel_for(0, (cols + kLine - 1) / kLine, rows * kLine * cost_of(act),
                              min_elements_per_thread(written), [&](int64_t l0, int64_t l1) {
                                activation_backward_columns(grad, z, a, rows, cols, l0 * kLine,
                                                            std::min(cols, l1 * kLine), act,
                                                            bias_grad);
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

namespace {

// Σ (out − target)² over n elements, with grad = norm · (out − target) when asked.
template <typename T>
double squared_error(const T* out, const T* target, int64_t n, T norm, T* grad) {
  switch (torchext::cpu::cpu_isa()) {
#if TORCHEXT_X86_SIMD
    case Isa::kAvx512: return squared_error_avx512(out, target, n, norm, grad);
    case Isa::kAvx2: return squared_error_avx2(out, target, n, norm, grad);
#endif
    default: return squared_error_portable(out, target, n, norm, grad);
  }
}

// Σ −log_softmax(logits[r])[target[r]] over rows [r0, r1), with the gradient of
// their mean over `inv_rows`⁻¹ rows into grad when asked.
template <typename T>
double cross_entropy_sum(const T* logits, const int64_t* target, int64_t r0, int64_t r1,
                         int64_t cols, T inv_rows, T* grad) {
  double sum = 0;
  for (int64_t r = r0; r < r1; ++r) {
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
  return sum;
}

// The elements the mean of `loss` divides by.
int64_t loss_count(Loss loss, int64_t rows, int64_t cols) {
  return loss == Loss::MSE ? rows * cols : rows;
}

}  // namespace

template <typename T>
T mse_loss(const T* out, const T* target, int64_t n, T* grad) {
  if (n == 0) return std::numeric_limits<T>::quiet_NaN();  // as torch: mean of nothing
  const T norm = T(2) / static_cast<T>(n);                 // mse_loss_backward's scale
  return the_mean<T>(squared_error(out, target, n, norm, grad), n);
}

template <typename T>
T cross_entropy_loss(const T* logits, const int64_t* target, int64_t rows, int64_t cols, T* grad) {
  if (rows == 0) return std::numeric_limits<T>::quiet_NaN();
  return the_mean<T>(
      cross_entropy_sum(logits, target, 0, rows, cols, T(1) / static_cast<T>(rows), grad), rows);
}

template <typename T>
void loss_chunks(Loss loss, const T* out, const T* target, const int64_t* classes, int64_t rows,
                 int64_t cols, int64_t r0, int64_t r1, T* grad, double* chunk_sums) {
  const T scale = (loss == Loss::MSE ? T(2) : T(1)) / static_cast<T>(loss_count(loss, rows, cols));
  for (int64_t c0 = r0; c0 < r1; c0 += kLossRows) {
    const int64_t c1 = std::min(r1, c0 + kLossRows);
    chunk_sums[c0 / kLossRows] =
        loss == Loss::MSE ? squared_error(out + c0 * cols, target + c0 * cols, (c1 - c0) * cols,
                                          scale, grad != nullptr ? grad + c0 * cols : nullptr)
                          : cross_entropy_sum(out, classes, c0, c1, cols, scale, grad);
  }
}

template <typename T>
T loss_of_chunks(Loss loss, const double* chunk_sums, int64_t rows, int64_t cols) {
  const int64_t count = loss_count(loss, rows, cols);
  if (count == 0) return std::numeric_limits<T>::quiet_NaN();  // as torch: mean of nothing
  double sum = 0;
  for (int64_t c = 0; c < (rows + kLossRows - 1) / kLossRows; ++c) sum += chunk_sums[c];
  return the_mean<T>(sum, count);
}

#define TORCHEXT_INSTANTIATE(T)                                                                   \
  template void bias_activation<T>(T*, const T*, int64_t, int64_t, Activation, T*, Written);      \
  template T mse_loss<T>(const T*, const T*, int64_t, T*);                                        \
  template T cross_entropy_loss<T>(const T*, const int64_t*, int64_t, int64_t, T*);               \
  template void loss_chunks<T>(Loss, const T*, const T*, const int64_t*, int64_t, int64_t,        \
                               int64_t, int64_t, T*, double*);                                    \
  template T loss_of_chunks<T>(Loss, const double*, int64_t, int64_t);                            \
  template void activation_backward<T>(T*, const T*, const T*, int64_t, int64_t, Activation, T*,  \
                                       Written);                                                  \
  template void activation_backward_columns<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                               int64_t, Activation, T*);
TORCHEXT_INSTANTIATE(float)
TORCHEXT_INSTANTIATE(double)
#undef TORCHEXT_INSTANTIATE

}  // namespace torchext::train::cpu
