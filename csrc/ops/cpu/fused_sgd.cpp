// CPU kernel of torchext::fused_sgd_: one read-modify-write pass over each
// (param, grad, momentum buffer) triple, in place, with no allocation for dense
// tensors. Small steps run whole tensors on the calling thread; large ones are
// split into chunks that torch's intra-op thread count of threads share.
//
// Where the CPU has AVX2+FMA (and torch runs its AVX2/AVX-512 kernels), the
// spans of fused_sgd_avx2.cpp (float32/float64) and fused_sgd_avx2_reduced.cpp
// (float16/bfloat16) run; elsewhere the portable spans below and in
// fused_sgd_reduced.cpp (at::vec, which in this build is its generic
// implementation since the extension has no ISA flags).
//
// This file is also the reference for csrc/ops/cuda/fused_sgd.cu: `sgd_update`
// below is the order of operations of torch.optim.SGD (_single_tensor_sgd),
//   g = grad * (1 / grad_scale)      (only with grad_scale, as GradScaler.unscale_;
//                                     written back to grad)
//   g = -g                           (maximize)
//   g = g + weight_decay * p
//   buf = g                          (first step: no dampening)
//   buf = momentum * buf + (1 - dampening) * g   (later steps)
//   g = g + momentum * buf  (nesterov)   or   g = buf
//   p = p + (-lr) * g
// float32/float64 compute in their own precision with the hyper-parameters cast to
// it (as torch's ops cast `alpha`); float16/bfloat16 round where torch's ops
// round (fused_sgd_reduced.h), so every dtype matches torch bit for bit.
#include "../fused_sgd_checks.h"
#include "fused_sgd_kernel.h"
#include "fused_sgd_reduced.h"
#include "run_in_parallel.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace torchext {
namespace {

using at::vec::Vectorized;

// Elements per parallel work item: large enough to amortise scheduling, small
// enough that a few big tensors still split across threads.
constexpr int64_t kChunk = 32768;
// Below this many elements in total the step runs on the calling thread.
constexpr int64_t kParallelMin = 65536;

using fused_sgd::Coeffs;
using fused_sgd::ReducedCoeffs;
using fused_sgd::StepArgs;

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
    g = g * V(c.inv_scale);
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

// Steps n consecutive float32/float64 elements. b is null without momentum; g is
// written only with grad_scale.
template <typename scalar_t>
void sgd_span(scalar_t* p, scalar_t* g, scalar_t* b, int64_t n, bool first_step,
              const StepArgs& args) {
  using Vec = Vectorized<scalar_t>;
  const Coeffs<scalar_t> c = args.coeffs<scalar_t>();
  const bool load_buf = b != nullptr && !first_step;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec vp = Vec::loadu(p + i), vg = Vec::loadu(g + i);
    Vec vb = load_buf ? Vec::loadu(b + i) : Vec(0);
    sgd_update(vp, vg, vb, first_step, c);
    vp.store(p + i);
    if (b != nullptr) vb.store(b + i);
    if (c.has_scale) vg.store(g + i);
  }
  for (; i < n; ++i) {  // tail, element by element
    scalar_t sp = p[i], sg = g[i], sb = load_buf ? b[i] : scalar_t(0);
    sgd_update(sp, sg, sb, first_step, c);
    p[i] = sp;
    if (b != nullptr) b[i] = sb;
    if (c.has_scale) g[i] = sg;
  }
}

// ---------------------------------------------------------------------------
// Choosing the span function and splitting the work.

// Everything a span function needs: the step, and its scalars as torch's ops
// see them for each 16-bit dtype of the call.
struct CallArgs {
  StepArgs step;
  ReducedCoeffs half, bfloat16;
};

// A span function stepping n elements of one dtype, behind untyped pointers so
// that the dtype is dispatched once per tensor rather than once per chunk.
// vector_semantics matters only to float16/bfloat16 (fused_sgd_reduced.h).
using SpanFn = void (*)(void* p, void* g, void* b, int64_t n, bool first_step,
                        bool vector_semantics, const CallArgs& args);

template <typename scalar_t>
void portable_span(void* p, void* g, void* b, int64_t n, bool first_step, bool,
                   const CallArgs& args) {
  sgd_span<scalar_t>(static_cast<scalar_t*>(p), static_cast<scalar_t*>(g),
                     static_cast<scalar_t*>(b), n, first_step, args.step);
}

template <at::ScalarType dtype>
void portable_reduced_span(void* p, void* g, void* b, int64_t n, bool first_step, bool,
                           const CallArgs& args) {
  fused_sgd::reduced_span_portable(dtype, p, g, b, n, first_step,
                                   dtype == at::kHalf ? args.half : args.bfloat16);
}

#if TORCHEXT_SGD_AVX2
template <typename scalar_t>
void avx2_span(void* p, void* g, void* b, int64_t n, bool first_step, bool, const CallArgs& args) {
  fused_sgd::sgd_span_avx2(static_cast<scalar_t*>(p), static_cast<scalar_t*>(g),
                           static_cast<scalar_t*>(b), n, first_step, args.step);
}

template <fused_sgd::Reduced dtype>
void avx2_reduced_span(void* p, void* g, void* b, int64_t n, bool first_step, bool vector_semantics,
                       const CallArgs& args) {
  fused_sgd::sgd_span_avx2(dtype, static_cast<uint16_t*>(p), static_cast<uint16_t*>(g),
                           static_cast<uint16_t*>(b), n, first_step, vector_semantics,
                           dtype == fused_sgd::Reduced::kHalf ? args.half : args.bfloat16);
}
#endif

// The AVX2+FMA spans run where torch itself would run its AVX2 (or AVX-512)
// kernels: the CPU has both extensions and ATEN_CPU_CAPABILITY does not ask for
// the default kernels (which also lets tests cover the portable spans).
bool use_avx2_fma() {
#if TORCHEXT_SGD_AVX2
  static const bool use = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c") && at::get_cpu_capability() != "DEFAULT";
  return use;
#else
  return false;
#endif
}

SpanFn span_function(at::ScalarType dtype) {
#if TORCHEXT_SGD_AVX2
  if (use_avx2_fma()) {
    switch (dtype) {
      case at::kFloat: return &avx2_span<float>;
      case at::kDouble: return &avx2_span<double>;
      case at::kHalf: return &avx2_reduced_span<fused_sgd::Reduced::kHalf>;
      case at::kBFloat16: return &avx2_reduced_span<fused_sgd::Reduced::kBFloat16>;
      default: break;
    }
  }
#endif
  switch (dtype) {
    case at::kFloat: return &portable_span<float>;
    case at::kDouble: return &portable_span<double>;
    case at::kHalf: return &portable_reduced_span<at::kHalf>;
    case at::kBFloat16: return &portable_reduced_span<at::kBFloat16>;
    default: TORCH_CHECK(false, "torchext.fused_sgd_: unsupported dtype ", dtype);
  }
}

// One tensor triple as the span functions see it: the tensors' own memory when
// they share one dense layout (elements are data_ptr()[0 .. numel) in storage
// order), otherwise that of contiguous copies, written back afterwards.
struct Work {
  char *p, *g, *b;
  int64_t numel, elem_size;
  bool first_step;
  SpanFn fn;
  at::Tensor p_copy, g_copy, b_copy;  // defined only for stepping in copies
};

// A work item: elements [begin, end) of one tensor, all rounded alike.
struct Piece {
  size_t tensor;
  int64_t begin, end;
  bool vector_semantics;
};

bool same_dense_layout(const at::Tensor& p, const at::Tensor& t) {
  return !t.defined() || t.strides() == p.strides();
}

bool is_reduced(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

void fused_sgd_cpu_impl(at::TensorList params, at::TensorList grads,
                        at::TensorList momentum_buffers, const c10::List<bool>& is_first_step,
                        const CallArgs& args) {
  const bool has_buf = !momentum_buffers.empty();
  std::vector<Work> work;
  work.reserve(params.size());
  std::vector<Piece> pieces;
  int64_t total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const int64_t n = p.numel();
    if (n == 0) continue;
    const at::Tensor& g = grads[i];
    at::Tensor b = has_buf ? momentum_buffers[i] : at::Tensor();
    Work w{nullptr,
           nullptr,
           nullptr,
           n,
           static_cast<int64_t>(p.element_size()),
           has_buf && is_first_step.get(i),
           span_function(p.scalar_type())};
    if (p.is_non_overlapping_and_dense() && same_dense_layout(p, g) && same_dense_layout(p, b)) {
      w.p = static_cast<char*>(p.data_ptr());
      w.g = static_cast<char*>(g.data_ptr());
      w.b = has_buf ? static_cast<char*>(b.data_ptr()) : nullptr;
    } else {
      w.p_copy = p.contiguous();
      w.g_copy = g.contiguous();
      w.p = static_cast<char*>(w.p_copy.data_ptr());
      w.g = static_cast<char*>(w.g_copy.data_ptr());
      if (has_buf) {
        w.b_copy = b.contiguous();
        w.b = static_cast<char*>(w.b_copy.data_ptr());
      }
    }
    // Pieces of at most kChunk elements, never straddling a change of rounding.
    const auto runs = is_reduced(p.scalar_type())
                          ? fused_sgd::torch_elementwise_runs(n, use_avx2_fma())
                          : c10::SmallVector<fused_sgd::ElementRun, 4>{{0, n, true}};
    for (const auto& run : runs) {
      for (int64_t s = run.begin; s < run.end; s += kChunk) {
        pieces.push_back({work.size(), s, std::min(run.end, s + kChunk), run.vector_semantics});
      }
    }
    total += n;
    work.push_back(std::move(w));
  }

  auto step = [&](const Piece& piece) {
    const Work& w = work[piece.tensor];
    const int64_t offset = piece.begin * w.elem_size;
    w.fn(w.p + offset, w.g + offset, w.b != nullptr ? w.b + offset : nullptr,
         piece.end - piece.begin, w.first_step, piece.vector_semantics, args);
  };
  if (total < kParallelMin) {
    for (const Piece& piece : pieces) step(piece);
  } else {
    run_in_parallel(static_cast<int64_t>(pieces.size()), [&](int64_t k) { step(pieces[k]); });
  }

  // Write back what was stepped in a copy.
  size_t t = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].numel() == 0) continue;
    const Work& w = work[t++];
    if (!w.p_copy.defined()) continue;
    params[i].copy_(w.p_copy);
    if (has_buf) momentum_buffers[i].copy_(w.b_copy);
    if (args.step.has_scale) grads[i].copy_(w.g_copy);
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
  CallArgs args;
  args.step = {lr_tensor != nullptr ? lr_tensor->item<double>() : lr,
               momentum,
               dampening,
               weight_decay,
               nesterov,
               maximize,
               grad_scale.has_value(),
               grad_scale.has_value()
                   ? static_cast<float>(1.0 / static_cast<double>(grad_scale->item<float>()))
                   : 1.0f};
  // Converted (with torch's overflow check) before anything is written.
  bool has_half = false, has_bfloat16 = false;
  for (const at::Tensor& p : params) {
    has_half |= p.scalar_type() == at::kHalf;
    has_bfloat16 |= p.scalar_type() == at::kBFloat16;
  }
  if (has_half) args.half = fused_sgd::reduced_coeffs(at::kHalf, args.step);
  if (has_bfloat16) args.bfloat16 = fused_sgd::reduced_coeffs(at::kBFloat16, args.step);
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
