// Element runs, coefficients and the portable span for float16/bfloat16 in the
// CPU kernel of torchext::fused_sgd_ (see fused_sgd_reduced.h).
#include "fused_sgd_reduced.h"

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/TypeCast.h>

#include <algorithm>

namespace torchext::fused_sgd {
namespace {

int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The chunk length at::parallel_for gives each task for `numel` elements.
int64_t torch_chunk_length(int64_t numel) {
  const int64_t grain = at::internal::GRAIN_SIZE;
  const int64_t threads = at::get_num_threads();
  if (numel < grain || threads == 1 || at::in_parallel_region()) return numel;
#if AT_PARALLEL_OPENMP
  // One chunk per OpenMP thread, no more threads than grain-sized pieces.
  return divup(numel, std::min(threads, divup(numel, grain)));
#else
  // torch's own thread pool: chunks of at least a grain each.
  return std::max(grain, divup(numel, threads));
#endif
}

// torch's scalar loop for 16-bit T, in float: each op's result rounded to T,
// and a·y rounded before it is added.
template <typename T>
struct ScalarOps {
  static float round(float x) { return static_cast<float>(T(x)); }
  static float mul(float a, float b) { return round(a * b); }
  static float add_scaled(float x, float a, float y) { return round(x + round(a * y)); }
  static float neg(float a) { return -a; }
};

template <typename T>
void span(T* p, T* g, T* b, int64_t n, bool first_step, const Coeffs<float>& c) {
  for (int64_t i = 0; i < n; ++i) {
    float vp = p[i], vg = g[i];
    float vb = b != nullptr && !first_step ? static_cast<float>(b[i]) : 0.0f;
    sgd_math::update<ScalarOps<T>>(vp, vg, vb, first_step, c);
    p[i] = vp;
    if (b != nullptr) b[i] = vb;
    if (c.has_scale) g[i] = vg;
  }
}

template <typename T>
Coeffs<float> coeffs_for(const StepArgs& args, const char* name) {
  // Scalar::to<T>: the double converted with an overflow check, as torch converts `alpha`.
  auto alpha = [name](double v) {
    return static_cast<float>(c10::checked_convert<T, double>(v, name));
  };
  return {alpha(-args.lr),
          alpha(args.weight_decay),
          alpha(1 - args.dampening),
          static_cast<float>(args.momentum),  // buf.mul_(momentum): a float32 multiplier
          alpha(args.momentum),
          args.inv_scale,
          args.momentum != 0,
          args.nesterov,
          args.maximize,
          args.has_scale,
          args.weight_decay != 0};
}

}  // namespace

c10::SmallVector<ElementRun, 4> torch_elementwise_runs(int64_t numel, bool torch_vectorises) {
  c10::SmallVector<ElementRun, 4> runs;
  const int64_t chunk = std::max<int64_t>(torch_chunk_length(numel), 1);
  for (int64_t begin = 0; begin < numel; begin += chunk) {
    const int64_t end = std::min(numel, begin + chunk);
    const int64_t vector_end =
        torch_vectorises ? begin + (end - begin) / kTorchVectorBlock * kTorchVectorBlock : begin;
    if (vector_end > begin) runs.push_back({begin, vector_end, true});
    if (end > vector_end) runs.push_back({vector_end, end, false});
  }
  return runs;
}

Coeffs<float> reduced_coeffs(at::ScalarType dtype, const StepArgs& args) {
  if (dtype == at::kHalf) return coeffs_for<c10::Half>(args, "at::Half");
  TORCH_CHECK(dtype == at::kBFloat16, "torchext.fused_sgd_: ", dtype,
              " is not a 16-bit float type");
  return coeffs_for<c10::BFloat16>(args, "at::BFloat16");
}

void reduced_span_portable(at::ScalarType dtype, void* p, void* g, void* b, int64_t n,
                           bool first_step, const Coeffs<float>& c) {
  if (dtype == at::kHalf) {
    using T = c10::Half;
    span(static_cast<T*>(p), static_cast<T*>(g), static_cast<T*>(b), n, first_step, c);
  } else {
    using T = c10::BFloat16;
    span(static_cast<T*>(p), static_cast<T*>(g), static_cast<T*>(b), n, first_step, c);
  }
}

}  // namespace torchext::fused_sgd
