// The fused CPU update of the mixed-precision step (see mixed_update_cpu.h).
//
// Per chunk: the compute-dtype gradient is widened (and unscaled) into a
// per-chunk float32 scratch buffer, then fused_sgd_ steps the chunk's parameter,
// scratch gradient and momentum buffer. A chunk is below fused_sgd_'s own
// threading threshold, so each call runs on the thread that makes it, and the
// float32 step's result does not depend on where chunks start (its vector spans
// give every element the same instructions), so the update is bit for bit the
// float32 fused_sgd_ on float32 gradients.
#include "train/mixed_update_cpu.h"

#include "ops/cpu/run_in_parallel.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/irange.h>

#include <atomic>
#include <cstring>
#include <vector>

namespace torchext::train::mixed {
namespace {

// Elements per chunk: the chunk's parameter, buffer and scratch gradient
// (3 × 64 KiB) stay in a core's L2 cache; fused_sgd_ runs inline below 65536.
constexpr int64_t kChunk = 16384;
// Below this many elements a gradient is checked on the calling thread.
constexpr int64_t kCheckParallelMin = 1 << 20;

// Inf or NaN from the bits: all exponent bits set.
inline bool non_finite_bits(uint16_t bits, uint16_t exponent_mask) {
  return (bits & exponent_mask) == exponent_mask;
}

bool any_non_finite_span(const uint16_t* bits, int64_t n, uint16_t exponent_mask) {
  bool any = false;
  for (int64_t i = 0; i < n; ++i) any |= non_finite_bits(bits[i], exponent_mask);
  return any;
}

// g · inv_scale in float32, widened from bfloat16 (an exact shift) or float16.
void widen(const at::Tensor& grad, int64_t begin, int64_t n, float inv_scale, float* out) {
  if (grad.scalar_type() == at::kBFloat16) {
    const auto* g = reinterpret_cast<const uint16_t*>(grad.const_data_ptr()) + begin;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t bits = static_cast<uint32_t>(g[i]) << 16;
      float v;
      std::memcpy(&v, &bits, sizeof v);
      out[i] = v * inv_scale;
    }
  } else {
    const c10::Half* g = grad.const_data_ptr<c10::Half>() + begin;
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(g[i]) * inv_scale;
  }
}

at::Tensor float_span(float* data, int64_t n) {
  return at::from_blob(data, {n}, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

bool any_non_finite(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& t : tensors) {
    const uint16_t mask = t.scalar_type() == at::kBFloat16 ? 0x7f80 : 0x7c00;
    const auto* bits = reinterpret_cast<const uint16_t*>(t.const_data_ptr());
    const int64_t n = t.numel();
    if (n < kCheckParallelMin) {
      if (any_non_finite_span(bits, n, mask)) return true;
      continue;
    }
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    std::atomic<bool> found{false};
    run_in_parallel(chunks, [&](int64_t k) {
      if (found.load(std::memory_order_relaxed)) return;
      const int64_t begin = k * kChunk;
      if (any_non_finite_span(bits + begin, std::min(kChunk, n - begin), mask)) found = true;
    });
    if (found) return true;
  }
  return false;
}

void sgd_from_compute_grads(const Update::GroupCall& call, float inv_scale) {
  const bool momentum = !call.buffers.empty();
  struct Chunk {
    size_t tensor;
    int64_t begin, n;
  };
  std::vector<Chunk> chunks;
  for (const auto t : c10::irange(call.params.size())) {
    const bool first = momentum && call.is_first_step[t];
    if (momentum && !call.buffers[t].is_contiguous()) {
      // A buffer loaded with other strides than its parameter's: not in
      // storage order, so stepped whole, as fused_sgd_ steps it.
      const at::Tensor grad = call.grads[t].to(at::kFloat).mul_(inv_scale);
      fused_sgd_({call.params[t]}, {grad}, {call.buffers[t]}, c10::ArrayRef<bool>(first), call.lr,
                 call.options);
      continue;
    }
    const int64_t numel = call.params[t].numel();
    for (int64_t begin = 0; begin < numel; begin += kChunk) {
      chunks.push_back({t, begin, std::min(kChunk, numel - begin)});
    }
  }
  auto step = [&](int64_t k) {
    const Chunk& c = chunks[k];
    float scratch[kChunk];
    widen(call.grads[c.tensor], c.begin, c.n, inv_scale, scratch);
    std::vector<at::Tensor> buffer;
    if (momentum) {
      buffer.push_back(float_span(call.buffers[c.tensor].data_ptr<float>() + c.begin, c.n));
    }
    const bool first = momentum && call.is_first_step[c.tensor];
    fused_sgd_({float_span(call.params[c.tensor].data_ptr<float>() + c.begin, c.n)},
               {float_span(scratch, c.n)}, buffer, c10::ArrayRef<bool>(&first, momentum ? 1 : 0),
               call.lr, call.options);
  };
  if (chunks.size() <= 1) {
    for (const auto k : c10::irange(chunks.size())) step(static_cast<int64_t>(k));
  } else {
    run_in_parallel(static_cast<int64_t>(chunks.size()), step);
  }
}

}  // namespace torchext::train::mixed
