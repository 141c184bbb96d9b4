// ReLU's backward on bfloat16/float16 CPU tensors (see mixed_relu_cpu.h), on
// the bit patterns: `a <= 0` holds for ±0 and for every negative number that is
// not a NaN, so the test needs no conversion and the loop vectorises over
// 16-bit lanes. Large tensors are shared with torch's inter-op threads.
#include "train/mixed_relu_cpu.h"

#include "ops/cpu/run_in_parallel.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace torchext::train::mixed {
namespace {

constexpr int64_t kChunk = 1 << 16;        // elements per work item
constexpr int64_t kParallelMin = 1 << 18;  // below this, on the calling thread

// `inf_bits`: the magnitude bits of +inf (0x7f80 bfloat16, 0x7c00 float16);
// magnitudes above it are NaNs.
void relu_backward_span(uint16_t* grad, const uint16_t* a, int64_t n, uint16_t inf_bits) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t magnitude = a[i] & 0x7fffu;
    const bool negative = (a[i] & 0x8000u) != 0;
    const bool not_positive = magnitude == 0 || (negative && magnitude <= inf_bits);
    grad[i] = not_positive ? uint16_t{0} : grad[i];
  }
}

}  // namespace

bool relu_backward_applies(const at::Tensor& grad, const at::Tensor& a) {
  const at::ScalarType dtype = grad.scalar_type();
  return (dtype == at::kBFloat16 || dtype == at::kHalf) && a.scalar_type() == dtype &&
         grad.is_cpu() && a.is_cpu() && grad.sizes() == a.sizes() && grad.is_contiguous() &&
         a.is_contiguous();
}

void relu_backward_(const at::Tensor& grad, const at::Tensor& a) {
  TORCH_INTERNAL_ASSERT(relu_backward_applies(grad, a));
  const uint16_t inf_bits = grad.scalar_type() == at::kBFloat16 ? 0x7f80u : 0x7c00u;
  auto* g = reinterpret_cast<uint16_t*>(grad.data_ptr());
  const auto* x = reinterpret_cast<const uint16_t*>(a.const_data_ptr());
  const int64_t n = grad.numel();
  if (n < kParallelMin) {
    relu_backward_span(g, x, n, inf_bits);
    return;
  }
  run_in_parallel((n + kChunk - 1) / kChunk, [&](int64_t k) {
    const int64_t begin = k * kChunk;
    relu_backward_span(g + begin, x + begin, std::min(kChunk, n - begin), inf_bits);
  });
}

}  // namespace torchext::train::mixed
