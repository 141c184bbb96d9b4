// CPU kernel of torchext::fused_sgd_: one read-modify-write pass over each
// (param, grad, momentum buffer) triple, vectorised with at::vec and split into
// chunks that at::parallel_for spreads over threads.
//
// This file is also the reference for csrc/ops/cuda/fused_sgd.cu: `sgd_update`
// below is the order of operations of torch.optim.SGD (_single_tensor_sgd),
//   g = grad / grad_scale            (only with grad_scale; written back to grad)
//   g = -g                           (maximize)
//   g = g + weight_decay * p
//   buf = g                          (first step: no dampening)
//   buf = momentum * buf + (1 - dampening) * g   (later steps)
//   g = g + momentum * buf  (nesterov)   or   g = buf
//   p = p + (-lr) * g
// float32/float64 compute in their own precision with the hyper-parameters cast to
// it (as torch's ops cast `alpha`); float16/bfloat16 compute in float32.
#include "../fused_sgd_checks.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <vector>

namespace torchext {
namespace {

using at::vec::Vectorized;

// Elements per parallel work item: large enough to amortise scheduling, small
// enough that a few big tensors still split across threads.
constexpr int64_t kChunk = 32768;
// Below this many elements in total the step runs on the calling thread.
constexpr int64_t kParallelMin = 65536;

// Hyper-parameters of one call, cast to the math type T of a tensor.
template <typename T>
struct Coeffs {
  T neg_lr, momentum, one_minus_dampening, weight_decay, grad_scale;
  bool has_buf, nesterov, maximize, has_scale, has_weight_decay;
};

struct StepArgs {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
  bool has_scale;
  float grad_scale;

  template <typename T>
  Coeffs<T> coeffs() const {
    return {static_cast<T>(-lr),           static_cast<T>(momentum),
            static_cast<T>(1 - dampening), static_cast<T>(weight_decay),
            static_cast<T>(grad_scale),    momentum != 0,
            nesterov,                      maximize,
            has_scale,                     weight_decay != 0};
  }
};

// The element-wise helpers are forced inline: left to itself the compiler calls
// them (and at::vec's generic operators) once per vector, several times slower.
// a * b + c is two roundings here, as in the scalar loops of torch's kernels; its
// AVX2 kernels fuse it, which can differ in the last bit.
template <typename V>
C10_ALWAYS_INLINE V muladd(const V& a, const V& b, const V& c) {
  return a * b + c;
}
// Exact negation (-0 for 0), as torch's -grad.
template <typename V>
C10_ALWAYS_INLINE V negate(const V& a) {
  return a * V(-1);
}

// The update of one element (V = T) or one vector of elements (V = Vectorized<T>).
// `g` comes back unscaled (it is stored to grad when c.has_scale).
template <typename V, typename T>
C10_ALWAYS_INLINE void sgd_update(V& p, V& g, V& buf, bool first_step, const Coeffs<T>& c) {
  if (c.has_scale) {
    g = g / V(c.grad_scale);
  }
  V d = c.maximize ? negate(g) : g;
  if (c.has_weight_decay) {
    d = muladd(p, V(c.weight_decay), d);
  }
  if (c.has_buf) {
    buf = first_step ? d : muladd(d, V(c.one_minus_dampening), buf * V(c.momentum));
    d = c.nesterov ? muladd(buf, V(c.momentum), d) : buf;
  }
  p = muladd(d, V(c.neg_lr), p);
}

// Steps n consecutive elements. b is null without momentum; g is written only
// with grad_scale.
template <typename scalar_t>
void sgd_span(scalar_t* p, scalar_t* g, scalar_t* b, int64_t n, bool first_step,
              const StepArgs& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<scalar_t>;
  const Coeffs<opmath_t> c = args.coeffs<opmath_t>();
  const bool load_buf = b != nullptr && !first_step;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    for (; i + Vec::size() <= n; i += Vec::size()) {
      Vec vp = Vec::loadu(p + i), vg = Vec::loadu(g + i);
      Vec vb = load_buf ? Vec::loadu(b + i) : Vec(0);
      sgd_update(vp, vg, vb, first_step, c);
      vp.store(p + i);
      if (b != nullptr) vb.store(b + i);
      if (c.has_scale) vg.store(g + i);
    }
  } else {
    // Reduced precision: one Vec of scalar_t is two float vectors.
    using FVec = Vectorized<float>;
    for (; i + Vec::size() <= n; i += Vec::size()) {
      auto [p0, p1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(p + i));
      auto [g0, g1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(g + i));
      FVec b0(0), b1(0);
      if (load_buf) std::tie(b0, b1) = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i));
      sgd_update(p0, g0, b0, first_step, c);
      sgd_update(p1, g1, b1, first_step, c);
      at::vec::convert_from_float<scalar_t>(p0, p1).store(p + i);
      if (b != nullptr) at::vec::convert_from_float<scalar_t>(b0, b1).store(b + i);
      if (c.has_scale) at::vec::convert_from_float<scalar_t>(g0, g1).store(g + i);
    }
  }
  for (; i < n; ++i) {  // tail, element by element
    opmath_t sp = p[i], sg = g[i], sb = load_buf ? opmath_t(b[i]) : opmath_t(0);
    sgd_update(sp, sg, sb, first_step, c);
    p[i] = sp;
    if (b != nullptr) b[i] = sb;
    if (c.has_scale) g[i] = sg;
  }
}

// The memory one tensor triple is stepped in: the tensors themselves when they
// share one dense layout, otherwise contiguous copies written back afterwards.
struct Work {
  at::Tensor p, g, b;
  bool first_step;
};

bool same_dense_layout(const at::Tensor& p, const at::Tensor& t) {
  return !t.defined() || t.strides() == p.strides();
}

void fused_sgd_cpu_impl(at::TensorList params, at::TensorList grads,
                        at::TensorList momentum_buffers, const c10::List<bool>& is_first_step,
                        const StepArgs& args) {
  const bool has_buf = !momentum_buffers.empty();
  std::vector<Work> work;
  work.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    at::Tensor b = has_buf ? momentum_buffers[i] : at::Tensor();
    const bool first = has_buf && is_first_step.get(i);
    if (p.is_non_overlapping_and_dense() && same_dense_layout(p, grads[i]) &&
        same_dense_layout(p, b)) {
      work.push_back({p, grads[i], b, first});
    } else {
      work.push_back({p.contiguous(), grads[i].contiguous(),
                      has_buf ? b.contiguous() : at::Tensor(), first});
    }
  }

  // Work items: (tensor, first element, end element), kChunk elements each.
  struct Item {
    size_t tensor;
    int64_t begin, end;
  };
  std::vector<Item> items;
  int64_t total = 0;
  for (size_t t = 0; t < work.size(); ++t) {
    const int64_t n = work[t].p.numel();
    total += n;
    for (int64_t s = 0; s < n; s += kChunk) items.push_back({t, s, std::min(n, s + kChunk)});
  }
  auto run = [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const Item& it = items[k];
      const Work& w = work[it.tensor];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.p.scalar_type(), "fused_sgd_",
                                      [&] {
        // Dense tensors: the elements are data_ptr()[0 .. numel) in storage order.
        scalar_t* b = w.b.defined() ? w.b.data_ptr<scalar_t>() + it.begin : nullptr;
        sgd_span<scalar_t>(w.p.data_ptr<scalar_t>() + it.begin,
                           w.g.data_ptr<scalar_t>() + it.begin, b, it.end - it.begin,
                           w.first_step, args);
      });
    }
  };
  if (total < kParallelMin) {
    run(0, static_cast<int64_t>(items.size()));
  } else {
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, run);
  }

  // Write back what was stepped in a copy.
  size_t t = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    const Work& w = work[t++];
    if (!w.p.is_same(params[i])) params[i].copy_(w.p);
    if (has_buf && !w.b.is_same(momentum_buffers[i])) momentum_buffers[i].copy_(w.b);
    if (args.has_scale && !w.g.is_same(grads[i])) grads[i].copy_(w.g);
  }
}

void fused_sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   const c10::List<bool>& is_first_step, double lr, double momentum,
                   double dampening, double weight_decay, bool nesterov, bool maximize,
                   const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& found_inf, const at::Tensor* lr_tensor) {
  fused_sgd::check_args(params, grads, momentum_buffers, is_first_step.size(), momentum, lr_tensor,
                        grad_scale, found_inf, at::kCPU);
  if (params.empty()) return;
  if (found_inf.has_value() && found_inf->item<float>() != 0.0f) return;
  StepArgs args{lr_tensor != nullptr ? lr_tensor->item<double>() : lr,
                momentum,
                dampening,
                weight_decay,
                nesterov,
                maximize,
                grad_scale.has_value(),
                grad_scale.has_value() ? grad_scale->item<float>() : 1.0f};
  fused_sgd_cpu_impl(params, grads, momentum_buffers, is_first_step, args);
}

void fused_sgd_cpu_scalar_lr(at::TensorList params, at::TensorList grads,
                             at::TensorList momentum_buffers, const c10::List<bool>& is_first_step,
                             double lr, double momentum, double dampening, double weight_decay,
                             bool nesterov, bool maximize,
                             const std::optional<at::Tensor>& grad_scale,
                             const std::optional<at::Tensor>& found_inf) {
  fused_sgd_cpu(params, grads, momentum_buffers, is_first_step, lr, momentum, dampening,
                weight_decay, nesterov, maximize, grad_scale, found_inf, nullptr);
}

void fused_sgd_cpu_tensor_lr(at::TensorList params, at::TensorList grads,
                             at::TensorList momentum_buffers, const c10::List<bool>& is_first_step,
                             const at::Tensor& lr, double momentum, double dampening,
                             double weight_decay, bool nesterov, bool maximize,
                             const std::optional<at::Tensor>& grad_scale,
                             const std::optional<at::Tensor>& found_inf) {
  fused_sgd_cpu(params, grads, momentum_buffers, is_first_step, 0.0, momentum, dampening,
                weight_decay, nesterov, maximize, grad_scale, found_inf, &lr);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("fused_sgd_", &fused_sgd_cpu_scalar_lr);
  m.impl("fused_sgd_.tensor_lr", &fused_sgd_cpu_tensor_lr);
}

}  // namespace torchext
