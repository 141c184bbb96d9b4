// The elementwise passes of the training core (cpu_kernels.h) that the
// compiler does not vectorise well by itself, written against one SIMD build's
// vector types: the mean-squared-error loss with its gradient, and the
// activation gradient with the bias-gradient column sums. Included once by each
// build's file (cpu_kernels_avx2.cpp, cpu_kernels_avx512.cpp) after
// gemm_tiles_simd.h, whose definitions (TORCHEXT_TILE_TARGET, vec) it uses;
// TORCHEXT_BUILD(name) names its entry points (passes.h).
#pragma once

#include "train/gemm_tiles_simd.h"
#include "train/passes.h"

namespace torchext::train::cpu {
namespace {

using Sums = vec::Double::V[2];

// sum += diff², in double lanes.
TORCHEXT_TILE_INLINE void add_squares(vec::Float::V diff, Sums& sum) {
  using D = vec::Double;
  const D::V lo = vec::Float::widen_low(diff), hi = vec::Float::widen_high(diff);
  sum[0] = D::fmadd(lo, lo, sum[0]);
  sum[1] = D::fmadd(hi, hi, sum[1]);
}
TORCHEXT_TILE_INLINE void add_squares(vec::Double::V diff, Sums& sum) {
  sum[0] = vec::Double::fmadd(diff, diff, sum[0]);
}

// Σ (out − target)² in double, and grad = norm · (out − target) when asked:
// the difference in T, as mse_loss computes it, then widened.
template <class A>
TORCHEXT_TILE_TARGET double squared_error(const typename A::T* out, const typename A::T* target,
                                          int64_t n, typename A::T norm, typename A::T* grad) {
  constexpr int64_t W = A::kWidth;
  using D = vec::Double;
  // Two vectors a step into two sets of sums: the additions of one set wait
  // for each other (latency), those of the two sets do not.
  Sums sum = {D::zero(), D::zero()}, sum2 = {D::zero(), D::zero()};
  const typename A::V vnorm = A::set1(norm);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const typename A::V diff = A::sub(A::load(out + i), A::load(target + i));
    const typename A::V diff2 = A::sub(A::load(out + i + W), A::load(target + i + W));
    if (grad != nullptr) {
      A::store(grad + i, A::mul(vnorm, diff));
      A::store(grad + i + W, A::mul(vnorm, diff2));
    }
    add_squares(diff, sum);
    add_squares(diff2, sum2);
  }
  for (; i + W <= n; i += W) {
    const typename A::V diff = A::sub(A::load(out + i), A::load(target + i));
    if (grad != nullptr) A::store(grad + i, A::mul(vnorm, diff));
    add_squares(diff, sum);
  }
  if (i < n) {
    const typename A::Mask mask = A::first(n - i);
    const typename A::V diff = A::sub(A::load(out + i, mask), A::load(target + i, mask));
    if (grad != nullptr) A::store(grad + i, A::mul(vnorm, diff), mask);
    add_squares(diff, sum);  // masked-off lanes are 0 − 0
  }
  return D::sum(D::add(D::add(sum[0], sum[1]), D::add(sum2[0], sum2[1])));
}

// Columns [c0, c1) of grad [rows, cols] (dL/da in, dL/dz out) for Identity,
// ReLU, Tanh or Sigmoid from the activation's output a, with their sums over
// the rows into bias_grad when non-null: one vector column per pass over rows.
template <class A>
TORCHEXT_TILE_TARGET void activation_backward(typename A::T* grad, const typename A::T* a,
                                              int64_t rows, int64_t c0, int64_t c1, int64_t cols,
                                              Activation act, typename A::T* bias_grad) {
  using V = typename A::V;
  constexpr int64_t W = A::kWidth;
  const V one = A::set1(1);
  for (int64_t c = c0; c < c1; c += W) {
    const bool partial = c1 - c < W;
    const typename A::Mask mask = A::first(c1 - c);
    V sum = A::zero();
    for (int64_t r = 0; r < rows; ++r) {
      typename A::T* g = grad + r * cols + c;
      V x = partial ? A::load(g, mask) : A::load(g);
      if (act != Activation::Identity) {
        const typename A::T* ar = a + r * cols + c;
        const V y = partial ? A::load(ar, mask) : A::load(ar);
        switch (act) {
          case Activation::ReLU: x = A::relu_grad(x, y); break;
          case Activation::Tanh: x = A::mul(x, A::sub(one, A::mul(y, y))); break;
          case Activation::Sigmoid: x = A::mul(A::mul(x, A::sub(one, y)), y); break;
          default: break;
        }
        if (partial) {
          A::store(g, x, mask);
        } else {
          A::store(g, x);
        }
      }
      sum = A::add(sum, x);
    }
    if (bias_grad != nullptr) {
      if (partial) {
        A::store(bias_grad + c, sum, mask);
      } else {
        A::store(bias_grad + c, sum);
      }
    }
  }
}

}  // namespace

double TORCHEXT_BUILD(squared_error)(const float* out, const float* target, int64_t n, float norm,
                                     float* grad) {
  return squared_error<vec::Float>(out, target, n, norm, grad);
}
double TORCHEXT_BUILD(squared_error)(const double* out, const double* target, int64_t n,
                                     double norm, double* grad) {
  return squared_error<vec::Double>(out, target, n, norm, grad);
}
void TORCHEXT_BUILD(activation_backward)(float* grad, const float* a, int64_t rows, int64_t c0,
                                         int64_t c1, int64_t cols, Activation act,
                                         float* bias_grad) {
  activation_backward<vec::Float>(grad, a, rows, c0, c1, cols, act, bias_grad);
}
void TORCHEXT_BUILD(activation_backward)(double* grad, const double* a, int64_t rows, int64_t c0,
                                         int64_t c1, int64_t cols, Activation act,
                                         double* bias_grad) {
  activation_backward<vec::Double>(grad, a, rows, c0, c1, cols, act, bias_grad);
}

}  // namespace torchext::train::cpu
