// CPU kernels of the emulated mixed-precision step (see mixed_step.h): float32
// buffers holding values rounded to the compute dtype (bfloat16 or float16),
// rounded where the stock loop under torch.autocast rounds, that is after every
// compute-dtype op. `compute` is at::kBFloat16 or at::kHalf; R(v) below rounds v
// to it (round to nearest even; inf where float16 overflows) and back.
// Legend: B batch rows, I in features, O out features (row-major [B, O] etc.).
#pragma once

#include <torchext/activation_loss.h>

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace torchext::train::mixed {

// dst[i] = R(src[i]): autocast's cast of a weight, a bias or the input.
void round_to(at::ScalarType compute, const float* src, float* dst, int64_t n);

// After z[B, O] = x·Wᵀ in float32 (rounded operands): z = R(z + bias) (bias
// rounded already, or null) as the compute-dtype addmm rounds its result once,
// then out = R(act(z)) as the compute-dtype activation does. `out` may alias `z`
// except for GELU, whose backward needs z.
void bias_activation(at::ScalarType compute, float* z, const float* bias, int64_t rows,
                     int64_t cols, Activation act, float* out);

// grad [B, O]: dL/da in (a float32 GEMM result or the loss gradient), dL/dz out,
// in place: g = R(g), then R(act'(g, z, a)) as the compute-dtype *_backward op
// computes it. bias_grad (or null) gets R(Σ_B dL/dz), as the compute-dtype sum.
void activation_backward(at::ScalarType compute, float* grad, const float* z, const float* a,
                         int64_t rows, int64_t cols, Activation act, float* bias_grad);

// The float32 losses of autocast (mean reduction) over outputs [B, C] already
// rounded; the gradient, when grad is non-null, is R(incoming · dL/dout): the
// float32 gradient times the loss's incoming gradient (1, or the loss scale),
// rounded as its cast back to the compute dtype rounds it.
float mse_loss(at::ScalarType compute, const float* out, const float* target, int64_t n,
               float incoming, float* grad);
float cross_entropy_loss(at::ScalarType compute, const float* logits, const int64_t* target,
                         int64_t rows, int64_t cols, float incoming, float* grad);

// A weight gradient as the update reads it: g = R(g) · inv_scale, in place (the
// compute-dtype GEMM's rounding, then GradScaler.unscale_'s multiply). Returns
// whether any R(g) is not finite.
bool round_and_unscale(at::ScalarType compute, float* g, int64_t n, float inv_scale);

}  // namespace torchext::train::mixed
