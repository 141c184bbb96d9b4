// CPU kernel of torchext::fused_sgd_: one read-modify-write pass over each
// (param, grad, momentum buffer) triple, in place, with no allocation for dense
// tensors. Small steps run whole tensors on the calling thread; large ones are
// split into chunks that torch's intra-op threads share (csrc/cpu/dispatch.h).
//
// The update is csrc/ops/sgd_math.h's (torch.optim.SGD's order of operations),
// run by the span functions of the build cpu_isa() picks (csrc/cpu/dispatch.h):
// AVX-512 or AVX2 (fused_sgd_avx512.cpp, fused_sgd_avx2.cpp), or the portable
// spans below and in fused_sgd_reduced.cpp. float32/float64 compute in their
// own precision with the hyper-parameters cast to it (as torch's ops cast
// `alpha`); float16/bfloat16 round where torch's ops round
// (fused_sgd_reduced.h), so every dtype matches torch bit for bit: the SIMD
// builds fuse x + a·y as torch's AVX2/AVX-512 kernels do, the portable spans
// round the product and the sum as its DEFAULT kernels do
// (ATEN_CPU_CAPABILITY=default selects both).
#include "ops/cpu/fused_sgd_cpu.h"

#include "../fused_sgd_checks.h"
#include "fused_sgd_kernel.h"
#include "fused_sgd_reduced.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace torchext {
namespace {

using cpu::Isa;
using fused_sgd::Coeffs;
using fused_sgd::StepArgs;

// Elements per parallel work item: large enough to amortise scheduling, small
// enough that a few big tensors still split across threads.
constexpr int64_t kChunk = 32768;

// The portable arithmetic of float32/float64: a product and a sum, each rounded
// (the baseline ISA has no fused multiply-add to contract them into).
template <typename T>
struct PlainOps {
  static T mul(T a, T b) { return a * b; }
  static T add_scaled(T x, T a, T y) { return x + a * y; }
  static T neg(T a) { return a * T(-1); }  // exact, as torch's -grad
};

template <typename T>
void portable_span(T* p, T* g, T* b, int64_t n, bool first_step, const Coeffs<T>& c) {
  for (int64_t i = 0; i < n; ++i) {
    T sp = p[i], sg = g[i], sb = b != nullptr && !first_step ? b[i] : T(0);
    sgd_math::update<PlainOps<T>>(sp, sg, sb, first_step, c);
    p[i] = sp;
    if (b != nullptr) b[i] = sb;
    if (c.has_scale) g[i] = sg;
  }
}

// ---------------------------------------------------------------------------
// Choosing the span function and splitting the work.

// The coefficients of one call for each dtype it holds.
struct CallArgs {
  StepArgs step;
  Coeffs<float> f32, half, bfloat16;
  Coeffs<double> f64;
};

// A span function stepping n elements of one dtype, behind untyped pointers so
// that the dtype is dispatched once per tensor rather than once per chunk.
// vector_semantics matters only to float16/bfloat16 (fused_sgd_reduced.h).
using SpanFn = void (*)(void* p, void* g, void* b, int64_t n, bool first_step,
                        bool vector_semantics, const CallArgs& args);

const Coeffs<float>& coeffs_of(float*, const CallArgs& args) { return args.f32; }
const Coeffs<double>& coeffs_of(double*, const CallArgs& args) { return args.f64; }

template <typename T, void (*kSpan)(T*, T*, T*, int64_t, bool, const Coeffs<T>&)>
void typed_span(void* p, void* g, void* b, int64_t n, bool first_step, bool, const CallArgs& args) {
  T* tp = static_cast<T*>(p);
  kSpan(tp, static_cast<T*>(g), static_cast<T*>(b), n, first_step, coeffs_of(tp, args));
}

template <at::ScalarType dtype>
void portable_reduced_span(void* p, void* g, void* b, int64_t n, bool first_step, bool,
                           const CallArgs& args) {
  fused_sgd::reduced_span_portable(dtype, p, g, b, n, first_step,
                                   dtype == at::kHalf ? args.half : args.bfloat16);
}

#if TORCHEXT_X86_SIMD
template <fused_sgd::Reduced dtype,
          void (*kSpan)(fused_sgd::Reduced, uint16_t*, uint16_t*, uint16_t*, int64_t, bool, bool,
                        const Coeffs<float>&)>
void simd_reduced_span(void* p, void* g, void* b, int64_t n, bool first_step, bool vector_semantics,
                       const CallArgs& args) {
  kSpan(dtype, static_cast<uint16_t*>(p), static_cast<uint16_t*>(g), static_cast<uint16_t*>(b), n,
        first_step, vector_semantics,
        dtype == fused_sgd::Reduced::kHalf ? args.half : args.bfloat16);
}

// The span functions of one SIMD build (kFloat, kDouble, kReduced: its entry points).
template <void (*kFloat)(float*, float*, float*, int64_t, bool, const Coeffs<float>&),
          void (*kDouble)(double*, double*, double*, int64_t, bool, const Coeffs<double>&),
          void (*kReduced)(fused_sgd::Reduced, uint16_t*, uint16_t*, uint16_t*, int64_t, bool, bool,
                           const Coeffs<float>&)>
SpanFn simd_span(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return &typed_span<float, kFloat>;
    case at::kDouble: return &typed_span<double, kDouble>;
    case at::kHalf: return &simd_reduced_span<fused_sgd::Reduced::kHalf, kReduced>;
    case at::kBFloat16: return &simd_reduced_span<fused_sgd::Reduced::kBFloat16, kReduced>;
    default: return nullptr;
  }
}
#endif

SpanFn span_function(Isa isa, at::ScalarType dtype) {
  SpanFn fn = nullptr;
#if TORCHEXT_X86_SIMD
  if (isa == Isa::kAvx512) {
    fn = simd_span<fused_sgd::sgd_span_avx512, fused_sgd::sgd_span_avx512,
                   fused_sgd::sgd_span_avx512>(dtype);
  } else if (isa == Isa::kAvx2) {
    fn = simd_span<fused_sgd::sgd_span_avx2, fused_sgd::sgd_span_avx2, fused_sgd::sgd_span_avx2>(
        dtype);
  }
#endif
  if (fn != nullptr) return fn;
  switch (dtype) {
    case at::kFloat: return &typed_span<float, portable_span<float>>;
    case at::kDouble: return &typed_span<double, portable_span<double>>;
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

// `is_first_step(i)`: whether buffer i is new (the op's bool[] is a c10::List,
// the training core's a plain array).
template <typename FirstStep>
void fused_sgd_cpu_impl(at::TensorList params, at::TensorList grads,
                        at::TensorList momentum_buffers, const FirstStep& is_first_step,
                        const CallArgs& args) {
  const Isa isa = cpu::cpu_isa();
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
           has_buf && is_first_step(i),
           span_function(isa, p.scalar_type())};
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
                          ? fused_sgd::torch_elementwise_runs(n, isa != Isa::kPortable)
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
  // All tensors' pieces in one parallel region, claimed one at a time (see
  // cpu::parallel_items): one fork/join per call, not one per tensor.
  cpu::parallel_items(static_cast<int64_t>(pieces.size()),
                      cpu::threads_for(total, cpu::kMinElementsPerThread),
                      [&](int64_t k) { step(pieces[k]); });

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

// The coefficients of a step in every dtype among `params`, converted (with
// torch's overflow check) before anything is written.
CallArgs call_args(const StepArgs& step, at::TensorList params) {
  CallArgs args;
  args.step = step;
  bool has_half = false, has_bfloat16 = false;
  for (const at::Tensor& p : params) {
    has_half |= p.scalar_type() == at::kHalf;
    has_bfloat16 |= p.scalar_type() == at::kBFloat16;
  }
  args.f32 = sgd_math::cast_coeffs<float>(args.step);
  args.f64 = sgd_math::cast_coeffs<double>(args.step);
  if (has_half) args.half = fused_sgd::reduced_coeffs(at::kHalf, args.step);
  if (has_bfloat16) args.bfloat16 = fused_sgd::reduced_coeffs(at::kBFloat16, args.step);
  return args;
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
  const CallArgs args =
      call_args({lr_tensor != nullptr ? lr_tensor->item<double>() : lr, momentum, dampening,
                 weight_decay, nesterov, maximize, grad_scale.has_value(),
                 grad_scale.has_value()
                     ? static_cast<float>(1.0 / static_cast<double>(grad_scale->item<float>()))
                     : 1.0f},
                params);
  fused_sgd_cpu_impl(
      params, grads, momentum_buffers, [&](size_t i) { return is_first_step.get(i); }, args);
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

void fused_sgd_cpu_validated(at::TensorList params, at::TensorList grads,
                             at::TensorList momentum_buffers, c10::ArrayRef<bool> is_first_step,
                             double lr, const SGDStepOptions& options) {
  // The shapes alone, again: cheap, and what keeps the update from writing past
  // a buffer resized in place after the caller's checks (by a callback inside fit).
  for (size_t i = 0; i < params.size(); ++i) {
    fused_sgd::check_companion(grads[i], params[i], "grads", i);
    if (!momentum_buffers.empty()) {
      fused_sgd::check_companion(momentum_buffers[i], params[i], "momentum_buffers", i);
    }
  }
  if (params.empty()) return;
  const CallArgs args = call_args({lr, options.momentum, options.dampening, options.weight_decay,
                                   options.nesterov, options.maximize, false, 1.0f},
                                  params);
  fused_sgd_cpu_impl(
      params, grads, momentum_buffers, [&](size_t i) { return is_first_step[i]; }, args);
}

TORCH_LIBRARY_IMPL(torchext, CPU, m) {
  m.impl("fused_sgd_", &fused_sgd_cpu_scalar_lr);
  m.impl("fused_sgd_.tensor_lr", &fused_sgd_cpu_tensor_lr);
}

}  // namespace torchext
