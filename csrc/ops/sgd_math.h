// The update of torchext::fused_sgd_, written once for every kernel: the CPU's
// portable, AVX2 and AVX-512 spans (csrc/ops/cpu) and the CUDA kernel
// (csrc/ops/cuda/fused_sgd.cu). Plain C++ (no ATen), usable on the host and,
// under nvcc, on the device.
//
// torch.optim.SGD's order of operations, per element:
//   g = grad * (1 / grad_scale)      (only with grad_scale, as GradScaler.unscale_;
//                                     written back to grad)
//   d = maximize ? -g : g
//   d = d + weight_decay * p
//   buf = d                          (first step: no dampening)
//   buf = momentum * buf + (1 - dampening) * d   (later steps)
//   d = nesterov ? d + momentum * buf : buf
//   p = p + (-lr) * d
// Each kernel supplies the arithmetic (`Ops`) that rounds as torch's ops round on
// its path, and the coefficients as torch's ops see them there: float32/float64
// compute in their own type with every scalar cast to it; float16/bfloat16
// compute in float32 and round to the dtype after each op (on the CPU each
// `alpha` is first converted to the dtype, see fused_sgd_reduced.h; on CUDA it
// stays float32, as the _foreach kernels keep it).
#pragma once

#if defined(__CUDACC__)
#define TORCHEXT_SGD_INLINE __host__ __device__ __forceinline__
#else
#define TORCHEXT_SGD_INLINE inline __attribute__((always_inline))
#endif

// update() is forced inline into its caller. A caller compiled for another ISA
// (a target attribute, csrc/cpu/dispatch.h) defines TORCHEXT_SGD_TARGET as that
// attribute before including this header: code compiled for the baseline ISA
// cannot inline the caller's vector intrinsics (the compiler refuses it, so a
// missing definition is a build error, never a silent slowdown).
#ifndef TORCHEXT_SGD_TARGET
#define TORCHEXT_SGD_TARGET
#endif

namespace torchext::sgd_math {

// A call's hyper-parameters, as doubles.
struct StepArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
  bool has_scale;
  // 1 / grad_scale, computed as torch.amp.GradScaler computes its inverse scale
  // (in float64, then rounded to float32): unscaling multiplies by it, as
  // GradScaler.unscale_ does.
  float inv_scale;
};

// The coefficients of the update in a kernel's arithmetic type V (a float, a
// double, or a vector register of them).
template <typename V>
struct Coeffs {
  V neg_lr, weight_decay, one_minus_dampening;
  V momentum;        // the multiplier of buf (buf.mul_(momentum))
  V momentum_alpha;  // the alpha of nesterov's d.add_(buf, alpha=momentum)
  V inv_scale;
  bool has_buf, nesterov, maximize, has_scale, has_weight_decay;
};

// Every scalar cast to T, as torch's float32/float64 kernels cast `alpha`.
template <typename T>
TORCHEXT_SGD_INLINE Coeffs<T> cast_coeffs(const StepArgs& a) {
  return {static_cast<T>(-a.lr),
          static_cast<T>(a.weight_decay),
          static_cast<T>(1 - a.dampening),
          static_cast<T>(a.momentum),
          static_cast<T>(a.momentum),
          static_cast<T>(a.inv_scale),
          a.momentum != 0,
          a.nesterov,
          a.maximize,
          a.has_scale,
          a.weight_decay != 0};
}

// One element (or one vector of elements) of the update, in place. `buf` is
// read only when c.has_buf and not first_step. Ops provides, rounded to the
// dtype as the kernel's torch counterpart rounds:
//   Ops::mul(a, b)            a·b
//   Ops::add_scaled(x, a, y)  x + a·y   (torch's x.add(y, alpha=a))
//   Ops::neg(a)               -a, exactly (-0 for 0)
template <class Ops, typename V>
TORCHEXT_SGD_TARGET TORCHEXT_SGD_INLINE void update(V& p, V& g, V& buf, bool first_step,
                                                    const Coeffs<V>& c) {
  if (c.has_scale) g = Ops::mul(g, c.inv_scale);
  V d = c.maximize ? Ops::neg(g) : g;
  if (c.has_weight_decay) d = Ops::add_scaled(d, c.weight_decay, p);
  if (c.has_buf) {
    buf = first_step ? d : Ops::add_scaled(Ops::mul(buf, c.momentum), c.one_minus_dampening, d);
    d = c.nesterov ? Ops::add_scaled(d, c.momentum_alpha, buf) : buf;
  }
  p = Ops::add_scaled(p, c.neg_lr, d);
}

}  // namespace torchext::sgd_math
