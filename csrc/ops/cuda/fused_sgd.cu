// CUDA kernel of torchext::fused_sgd_: a multi-tensor step. The host packs the
// pointers and sizes of many tensors into one kernel-argument struct (ChunkList);
// each thread block steps one chunk of kChunk elements of one tensor, so a whole
// parameter list costs a handful of launches instead of several per tensor.
//
// The per-element math is csrc/ops/sgd_math.h's update, shared with the CPU
// kernel (csrc/ops/cpu/fused_sgd.cpp, the reference), rounded where torch's
// default CUDA path (the _foreach kernels) rounds: each of its ops computes in
// float32 (float64 for float64 tensors) with its scalar `alpha` in that type, as
// one fused multiply-add for x + alpha·y, and rounds its result to the tensor's
// dtype. lr (tensor overload), grad_scale and found_inf are read on the device,
// so the step never waits for the GPU; with found_inf non-zero every block
// returns before writing anything.
#include "../fused_sgd_checks.h"
#include "../sgd_math.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <vector>

namespace torchext {
namespace {

constexpr int kBlock = 512;        // threads per block
constexpr int kILP = 4;            // elements per thread per vector load
constexpr int64_t kChunk = 65536;  // elements per block
constexpr int kMaxBlocks = 320;    // blocks per launch (bounded by the argument struct)

// Tensors per launch: what fits, with the block table, in the 4 KB of kernel
// arguments every supported architecture accepts.
constexpr int max_tensors(int depth) { return depth == 2 ? 64 : 48; }

// The kernel argument: depth pointer lists (params, grads[, buffers]) and the
// block -> (tensor, chunk) table.
template <int kDepth>
struct ChunkList {
  void* ptrs[kDepth][max_tensors(kDepth)];
  int64_t numel[max_tensors(kDepth)];
  bool first_step[max_tensors(kDepth)];
  unsigned char block_tensor[kMaxBlocks];
  int block_chunk[kMaxBlocks];
};

struct DeviceArgs {
  double lr, momentum, dampening, weight_decay;
  const float* lr_f32;      // tensor lr on the device, float32 ...
  const double* lr_f64;     // ... or float64; both null: use `lr`
  const float* grad_scale;  // null: gradients are not scaled
  const float* found_inf;   // null: always step
  bool nesterov, maximize;
};

static_assert(sizeof(ChunkList<2>) + sizeof(DeviceArgs) <= 4000, "kernel arguments too large");
static_assert(sizeof(ChunkList<3>) + sizeof(DeviceArgs) <= 4000, "kernel arguments too large");

using sgd_math::Coeffs;

// The arithmetic of torch's _foreach kernels for scalar_t, in opmath_t:
// explicitly rounded products and fused multiply-adds (so that the compiler
// contracts nothing differently), each result rounded to the tensor's dtype (a
// no-op for float32/float64).
template <typename scalar_t>
struct ForeachOps {
  template <typename opmath_t>
  __device__ __forceinline__ static opmath_t rounded(opmath_t x) {
    return static_cast<opmath_t>(static_cast<scalar_t>(x));
  }
  __device__ __forceinline__ static float mul(float a, float b) { return rounded(__fmul_rn(a, b)); }
  __device__ __forceinline__ static double mul(double a, double b) {
    return rounded(__dmul_rn(a, b));
  }
  __device__ __forceinline__ static float add_scaled(float x, float a, float y) {
    return rounded(__fmaf_rn(a, y, x));
  }
  __device__ __forceinline__ static double add_scaled(double x, double a, double y) {
    return rounded(__fma_rn(a, y, x));
  }
  template <typename opmath_t>
  __device__ __forceinline__ static opmath_t neg(opmath_t a) {
    return -a;
  }
};

template <typename T>
struct alignas(sizeof(T) * kILP) Pack {
  T v[kILP];
};

template <typename T>
__device__ __forceinline__ bool is_aligned(const T* ptr) {
  return reinterpret_cast<std::uintptr_t>(ptr) % sizeof(Pack<T>) == 0;
}

// Grid: one block per (tensor, chunk) entry of `list`.
template <typename scalar_t, int kDepth>
__global__ void __launch_bounds__(kBlock)
    fused_sgd_kernel(const ChunkList<kDepth> list, const DeviceArgs a) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (a.found_inf != nullptr && *a.found_inf != 0.0f) return;

  const int tensor = list.block_tensor[blockIdx.x];
  const int64_t offset = static_cast<int64_t>(list.block_chunk[blockIdx.x]) * kChunk;
  const int64_t rest = list.numel[tensor] - offset;
  const int64_t n = rest < kChunk ? rest : kChunk;
  scalar_t* p = static_cast<scalar_t*>(list.ptrs[0][tensor]) + offset;
  scalar_t* g = static_cast<scalar_t*>(list.ptrs[1][tensor]) + offset;
  scalar_t* b = nullptr;
  bool first_step = false;
  if constexpr (kDepth == 3) {
    b = static_cast<scalar_t*>(list.ptrs[2][tensor]) + offset;
    first_step = list.first_step[tensor];
  }
  const bool load_buf = b != nullptr && !first_step;

  const double lr = a.lr_f32 != nullptr   ? static_cast<double>(*a.lr_f32)
                    : a.lr_f64 != nullptr ? *a.lr_f64
                                          : a.lr;
  // Every scalar in opmath_t (the _foreach kernels' alpha), the nesterov alpha
  // included; GradScaler's inverse scale: the reciprocal in float64, rounded to
  // float32.
  const bool has_scale = a.grad_scale != nullptr;
  const sgd_math::StepArgs step{
      lr,          a.momentum,
      a.dampening, a.weight_decay,
      a.nesterov,  a.maximize,
      has_scale,   has_scale ? static_cast<float>(1.0 / static_cast<double>(*a.grad_scale)) : 1.0f};
  const Coeffs<opmath_t> c = sgd_math::cast_coeffs<opmath_t>(step);  // has_buf: kDepth == 3

  int64_t done = 0;
  if (is_aligned(p) && is_aligned(g) && (b == nullptr || is_aligned(b))) {
    // Vector path: kILP elements per load/store.
    const int64_t packs = n / kILP;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      Pack<scalar_t> vp = reinterpret_cast<const Pack<scalar_t>*>(p)[i];
      Pack<scalar_t> vg = reinterpret_cast<const Pack<scalar_t>*>(g)[i];
      Pack<scalar_t> vb;
      if (load_buf) vb = reinterpret_cast<const Pack<scalar_t>*>(b)[i];
#pragma unroll
      for (int k = 0; k < kILP; ++k) {
        opmath_t sp = vp.v[k], sg = vg.v[k], sb = load_buf ? opmath_t(vb.v[k]) : opmath_t(0);
        sgd_math::update<ForeachOps<scalar_t>>(sp, sg, sb, first_step, c);
        vp.v[k] = static_cast<scalar_t>(sp);
        vg.v[k] = static_cast<scalar_t>(sg);
        vb.v[k] = static_cast<scalar_t>(sb);
      }
      reinterpret_cast<Pack<scalar_t>*>(p)[i] = vp;
      if (b != nullptr) reinterpret_cast<Pack<scalar_t>*>(b)[i] = vb;
      if (c.has_scale) reinterpret_cast<Pack<scalar_t>*>(g)[i] = vg;
    }
    done = packs * kILP;
  }
  // Misaligned pointers, and the tail of an aligned chunk: one element per thread.
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    opmath_t sp = p[i], sg = g[i], sb = load_buf ? opmath_t(b[i]) : opmath_t(0);
    sgd_math::update<ForeachOps<scalar_t>>(sp, sg, sb, first_step, c);
    p[i] = static_cast<scalar_t>(sp);
    if (b != nullptr) b[i] = static_cast<scalar_t>(sb);
    if (c.has_scale) g[i] = static_cast<scalar_t>(sg);
  }
}

// Tensors of one dtype, stepped in place (each a dense, equally strided triple).
struct Triple {
  at::Tensor p, g, b;
  bool first_step;
};

// Fills ChunkLists with the triples and launches one kernel per full list.
template <typename scalar_t, int kDepth>
void launch(const std::vector<const Triple*>& triples, const DeviceArgs& args) {
  constexpr int kMaxTensors = max_tensors(kDepth);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  ChunkList<kDepth> list;
  auto flush = [&](int blocks) {
    fused_sgd_kernel<scalar_t, kDepth><<<blocks, kBlock, 0, stream>>>(list, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  int slot = 0, blocks = 0;
  for (const Triple* t : triples) {
    const int64_t n = t->p.numel();
    list.ptrs[0][slot] = t->p.data_ptr();
    list.ptrs[1][slot] = t->g.data_ptr();
    if constexpr (kDepth == 3) list.ptrs[2][slot] = t->b.data_ptr();
    list.numel[slot] = n;
    list.first_step[slot] = t->first_step;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      list.block_tensor[blocks] = static_cast<unsigned char>(slot);
      list.block_chunk[blocks] = static_cast<int>(chunk);
      ++blocks;
      const bool last_chunk = chunk == chunks - 1;
      if (blocks == kMaxBlocks || (last_chunk && slot == kMaxTensors - 1)) {
        flush(blocks);
        blocks = 0;
        if (last_chunk) {
          slot = -1;  // the next tensor starts a fresh list
        } else {      // this tensor carries on: it becomes slot 0 of the next list
          for (int d = 0; d < kDepth; ++d) list.ptrs[d][0] = list.ptrs[d][slot];
          list.numel[0] = list.numel[slot];
          list.first_step[0] = list.first_step[slot];
          slot = 0;
        }
      }
    }
    ++slot;
  }
  if (blocks > 0) flush(blocks);
}

void fused_sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                    const c10::List<bool>& is_first_step, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool maximize,
                    const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf, const at::Tensor* lr_tensor) {
  fused_sgd::check_args(params, grads, momentum_buffers, is_first_step.size(), momentum, lr_tensor,
                        grad_scale, found_inf, at::kCUDA);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());

  DeviceArgs args{lr,      momentum, dampening, weight_decay, nullptr,
                  nullptr, nullptr,  nullptr,   nesterov,     maximize};
  if (lr_tensor != nullptr) {
    if (lr_tensor->is_cpu()) {
      args.lr = lr_tensor->item<double>();  // host memory: no device synchronisation
    } else if (lr_tensor->scalar_type() == at::kFloat) {
      args.lr_f32 = lr_tensor->data_ptr<float>();
    } else {
      args.lr_f64 = lr_tensor->data_ptr<double>();
    }
  }
  if (grad_scale.has_value()) args.grad_scale = grad_scale->data_ptr<float>();
  if (found_inf.has_value()) args.found_inf = found_inf->data_ptr<float>();

  // Triples stepped in place, or in contiguous copies written back afterwards.
  const bool has_buf = !momentum_buffers.empty();
  std::vector<Triple> work;
  std::vector<size_t> source;  // index into params of each work entry
  work.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    if (p.numel() == 0) continue;
    const at::Tensor b = has_buf ? momentum_buffers[i] : at::Tensor();
    const bool first = has_buf && is_first_step.get(i);
    const bool in_place = p.is_non_overlapping_and_dense() && grads[i].strides() == p.strides() &&
                          (!has_buf || b.strides() == p.strides());
    if (in_place) {
      work.push_back({p, grads[i], b, first});
    } else {
      work.push_back({p.contiguous(), grads[i].contiguous(), has_buf ? b.contiguous() : b, first});
    }
    source.push_back(i);
  }

  // One pass per dtype present.
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    std::vector<const Triple*> group;
    for (const Triple& t : work) {
      if (t.p.scalar_type() == dtype) group.push_back(&t);
    }
    if (group.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_sgd_cuda", [&] {
      if (has_buf) {
        launch<scalar_t, 3>(group, args);
      } else {
        launch<scalar_t, 2>(group, args);
      }
    });
  }

  for (size_t k = 0; k < work.size(); ++k) {
    const size_t i = source[k];
    if (!work[k].p.is_same(params[i])) params[i].copy_(work[k].p);
    if (has_buf && !work[k].b.is_same(momentum_buffers[i])) momentum_buffers[i].copy_(work[k].b);
    if (grad_scale.has_value() && !work[k].g.is_same(grads[i])) grads[i].copy_(work[k].g);
  }
}

void fused_sgd_cuda_scalar_lr(at::TensorList params, at::TensorList grads,
                              at::TensorList momentum_buffers, const c10::List<bool>& is_first_step,
                              double lr, double momentum, double dampening, double weight_decay,
                              bool nesterov, bool maximize,
                              const std::optional<at::Tensor>& grad_scale,
                              const std::optional<at::Tensor>& found_inf) {
  fused_sgd_cuda(params, grads, momentum_buffers, is_first_step, lr, momentum, dampening,
                 weight_decay, nesterov, maximize, grad_scale, found_inf, nullptr);
}

void fused_sgd_cuda_tensor_lr(at::TensorList params, at::TensorList grads,
                              at::TensorList momentum_buffers, const c10::List<bool>& is_first_step,
                              const at::Tensor& lr, double momentum, double dampening,
                              double weight_decay, bool nesterov, bool maximize,
                              const std::optional<at::Tensor>& grad_scale,
                              const std::optional<at::Tensor>& found_inf) {
  fused_sgd_cuda(params, grads, momentum_buffers, is_first_step, 0.0, momentum, dampening,
                 weight_decay, nesterov, maximize, grad_scale, found_inf, &lr);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, CUDA, m) {
  m.impl("fused_sgd_", &fused_sgd_cuda_scalar_lr);
  m.impl("fused_sgd_.tensor_lr", &fused_sgd_cuda_tensor_lr);
}

}  // namespace torchext
