// CPU kernels of the emulated mixed-precision step (see mixed_kernels.h).
//
// Every kernel is written once over a rounding policy (bfloat16 or float16) and
// dispatched on the compute dtype at its entry. The math is float32, as inside
// ATen's bfloat16/float16 CPU kernels (each op widens its inputs, computes in
// float32 and rounds its result once), with the formulas of the float32 kernels
// in cpu_kernels.cpp and ATen's *_backward ops. These kernels serve small models
// (larger ones take the ATen path), so they run on the calling thread.
#include "train/mixed_kernels.h"

#include "train/cpu_kernels.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace torchext::train::mixed {
namespace {

// Round to nearest even on the bit pattern, as c10::BFloat16's constructor, but
// branch-free so that loops over it vectorise; a NaN becomes the quiet NaN.
struct RoundBFloat16 {
  static inline float round(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    const uint32_t out = v != v ? 0x7fc00000u : rounded;
    float r;
    std::memcpy(&r, &out, sizeof r);
    return r;
  }
};

struct RoundHalf {
  static inline float round(float v) { return static_cast<float>(c10::Half(v)); }
};

template <class F>
auto dispatch(at::ScalarType compute, const F& f) {
  TORCH_INTERNAL_ASSERT(compute == at::kBFloat16 || compute == at::kHalf);
  return compute == at::kBFloat16 ? f(RoundBFloat16()) : f(RoundHalf());
}

inline float gelu_cdf(float z) {
  return 0.5f * (1.0f + std::erf(z * static_cast<float>(M_SQRT1_2)));
}

// The derivative of exact GELU, Φ(z) + z·φ(z), as gelu_backward computes it.
inline float gelu_slope(float z) {
  constexpr float kInvSqrt2Pi = static_cast<float>(M_2_SQRTPI * M_SQRT1_2 * 0.5);
  return gelu_cdf(z) + z * kInvSqrt2Pi * std::exp(-0.5f * z * z);
}

inline float activate(Activation act, float z) {
  switch (act) {
    case Activation::ReLU: return z < 0.0f ? 0.0f : z;  // NaN stays NaN, -0 stays -0
    case Activation::Tanh: return std::tanh(z);
    case Activation::Sigmoid: return 1.0f / (1.0f + std::exp(-z));
    case Activation::GELU: return z * gelu_cdf(z);
    case Activation::Identity: break;
  }
  return z;
}

// dL/dz from dL/da = g, as threshold/tanh/sigmoid/gelu_backward.
inline float activation_slope_times(Activation act, float g, float z, float a) {
  switch (act) {
    case Activation::ReLU: return a <= 0.0f ? 0.0f : g;
    case Activation::Tanh: return g * (1.0f - a * a);
    case Activation::Sigmoid: return g * (1.0f - a) * a;
    case Activation::GELU: return g * gelu_slope(z);
    case Activation::Identity: break;
  }
  return g;
}

// Calls f with the activation as a compile-time constant, so that the row loops
// below fold the activation's switch away and vectorise (with the switch inside
// the loop, ReLU's backward pass of the seed network took ~5 ns per element).
template <class F>
void with_activation(Activation act, const F& f) {
  switch (act) {
    case Activation::ReLU: return f(std::integral_constant<Activation, Activation::ReLU>());
    case Activation::Tanh: return f(std::integral_constant<Activation, Activation::Tanh>());
    case Activation::Sigmoid: return f(std::integral_constant<Activation, Activation::Sigmoid>());
    case Activation::GELU: return f(std::integral_constant<Activation, Activation::GELU>());
    case Activation::Identity: break;
  }
  f(std::integral_constant<Activation, Activation::Identity>());
}

}  // namespace

void round_to(at::ScalarType compute, const float* src, float* dst, int64_t n) {
  dispatch(compute, [&](auto r) {
    for (int64_t i = 0; i < n; ++i) dst[i] = r.round(src[i]);
  });
}

void bias_activation(at::ScalarType compute, float* z, const float* bias, int64_t rows,
                     int64_t cols, Activation act, float* out) {
  dispatch(compute, [&](auto r) {
    with_activation(act, [&](auto kAct) {
      for (int64_t i = 0; i < rows; ++i) {
        float* zr = z + i * cols;
        float* outr = out + i * cols;
        if (bias != nullptr) {
          for (int64_t c = 0; c < cols; ++c) zr[c] = r.round(zr[c] + bias[c]);
        } else {
          for (int64_t c = 0; c < cols; ++c) zr[c] = r.round(zr[c]);
        }
        if constexpr (kAct == Activation::Identity || kAct == Activation::ReLU) {
          // Exact in the compute dtype: no rounding needed.
          for (int64_t c = 0; c < cols; ++c) outr[c] = activate(kAct, zr[c]);
        } else {
          for (int64_t c = 0; c < cols; ++c) outr[c] = r.round(activate(kAct, zr[c]));
        }
      }
    });
  });
}

void activation_backward(at::ScalarType compute, float* grad, const float* z, const float* a,
                         int64_t rows, int64_t cols, Activation act, float* bias_grad) {
  dispatch(compute, [&](auto r) {
    if (bias_grad != nullptr) std::fill(bias_grad, bias_grad + cols, 0.0f);
    with_activation(act, [&](auto kAct) {
      for (int64_t i = 0; i < rows; ++i) {
        float* g = grad + i * cols;
        const float* zr = z + i * cols;
        const float* ar = a + i * cols;
        for (int64_t c = 0; c < cols; ++c) {
          g[c] = r.round(activation_slope_times(kAct, r.round(g[c]), zr[c], ar[c]));
        }
        if (bias_grad != nullptr) {
          for (int64_t c = 0; c < cols; ++c) bias_grad[c] += g[c];
        }
      }
    });
    if (bias_grad != nullptr) {
      for (int64_t c = 0; c < cols; ++c) bias_grad[c] = r.round(bias_grad[c]);
    }
  });
}

// The float32 kernels of the default precision (cpu_kernels.h) compute the loss
// and dL/dout for an incoming gradient of 1; one pass then multiplies the
// gradient by the actual incoming gradient and rounds it.
namespace {

void scale_and_round(at::ScalarType compute, float* grad, int64_t n, float incoming) {
  dispatch(compute, [&](auto r) {
    for (int64_t i = 0; i < n; ++i) grad[i] = r.round(grad[i] * incoming);
  });
}

}  // namespace

float mse_loss(at::ScalarType compute, const float* out, const float* target, int64_t n,
               float incoming, float* grad) {
  const float loss = cpu::mse_loss<float>(out, target, n, grad);
  if (grad != nullptr) scale_and_round(compute, grad, n, incoming);
  return loss;
}

float cross_entropy_loss(at::ScalarType compute, const float* logits, const int64_t* target,
                         int64_t rows, int64_t cols, float incoming, float* grad) {
  const float loss = cpu::cross_entropy_loss<float>(logits, target, rows, cols, grad);
  if (grad != nullptr) scale_and_round(compute, grad, rows * cols, incoming);
  return loss;
}

bool round_and_unscale(at::ScalarType compute, float* g, int64_t n, float inv_scale) {
  bool finite = true;
  dispatch(compute, [&](auto r) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = r.round(g[i]);
      finite &= std::isfinite(v);
      g[i] = v * inv_scale;
    }
  });
  return !finite;
}

}  // namespace torchext::train::mixed
