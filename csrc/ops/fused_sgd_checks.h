// Argument validation for torchext::fused_sgd_, shared by the CPU and CUDA kernels.
//
// Every check runs before a kernel writes anything, so a call that fails here
// leaves params, grads and momentum buffers exactly as they were. Messages name
// the argument and the tensor index so a user can find the offending parameter.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <optional>

namespace torchext::fused_sgd {

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A one-element float32 tensor on `device`: GradScaler's scale and found_inf.
inline void check_scalar_tensor(const std::optional<at::Tensor>& t, const char* name,
                                const at::Device& device) {
  if (!t.has_value()) {
    return;
  }
  TORCH_CHECK(t->defined(), "torchext.fused_sgd_: ", name, " is an undefined tensor");
  TORCH_CHECK(t->numel() == 1, "torchext.fused_sgd_: ", name,
              " must have exactly one element, got shape ", t->sizes());
  TORCH_CHECK(t->scalar_type() == at::kFloat, "torchext.fused_sgd_: ", name,
              " must be float32, got ", t->scalar_type());
  TORCH_CHECK(t->device() == device, "torchext.fused_sgd_: ", name, " is on ", t->device(),
              " but the params are on ", device);
}

// One tensor of a (param, grad, buffer) triple against its param.
inline void check_companion(const at::Tensor& t, const at::Tensor& p, const char* name, size_t i) {
  TORCH_CHECK(t.defined(), "torchext.fused_sgd_: ", name, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, "torchext.fused_sgd_: ", name, "[", i, "] has layout ",
              t.layout(), "; only dense (strided) tensors are supported");
  TORCH_CHECK(t.sizes() == p.sizes(), "torchext.fused_sgd_: ", name, "[", i, "] has shape ",
              t.sizes(), " but params[", i, "] has shape ", p.sizes());
  TORCH_CHECK(t.scalar_type() == p.scalar_type(), "torchext.fused_sgd_: ", name, "[", i,
              "] has dtype ", t.scalar_type(), " but params[", i, "] has dtype ", p.scalar_type());
  TORCH_CHECK(t.device() == p.device(), "torchext.fused_sgd_: ", name, "[", i, "] is on ",
              t.device(), " but params[", i, "] is on ", p.device());
}

// Validates a whole call. `lr` is the learning-rate tensor of the tensor_lr
// overload (nullptr for a float lr); `device_type` is the backend of the kernel.
inline void check_args(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                       size_t is_first_step_size, double momentum, const at::Tensor* lr,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, at::DeviceType device_type) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "torchext.fused_sgd_: got ", n, " params but ", grads.size(),
              " grads; there must be one grad per param");
  if (momentum == 0) {
    TORCH_CHECK(momentum_buffers.empty(), "torchext.fused_sgd_: momentum is 0 but ",
                momentum_buffers.size(),
                " momentum_buffers were given; pass none (SGD without momentum keeps no buffers)");
  } else {
    TORCH_CHECK(momentum_buffers.size() == n, "torchext.fused_sgd_: got ", n, " params but ",
                momentum_buffers.size(), " momentum_buffers; with momentum ", momentum,
                " there must be one buffer per param");
  }
  TORCH_CHECK(is_first_step_size == momentum_buffers.size(),
              "torchext.fused_sgd_: is_first_step has ", is_first_step_size,
              " entries but there are ", momentum_buffers.size(),
              " momentum_buffers; there must be one entry per buffer");
  if (n == 0) {
    return;
  }

  const at::Device device = params[0].device();
  TORCH_CHECK(device.type() == device_type, "torchext.fused_sgd_: params[0] is on ", device,
              " but this kernel is for ", device_type, " tensors");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), "torchext.fused_sgd_: params[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, "torchext.fused_sgd_: params[", i, "] has layout ",
                p.layout(), "; only dense (strided) tensors are supported");
    TORCH_CHECK(is_supported_dtype(p.scalar_type()), "torchext.fused_sgd_: params[", i,
                "] has dtype ", p.scalar_type(),
                "; supported are float32, float64, float16 and bfloat16 (pass complex "
                "tensors through torch.view_as_real)");
    TORCH_CHECK(p.device() == device, "torchext.fused_sgd_: params[", i, "] is on ", p.device(),
                " but params[0] is on ", device, "; all tensors of one call share a device");
    TORCH_CHECK(at::has_internal_overlap(p) != at::MemOverlap::Yes, "torchext.fused_sgd_: params[",
                i,
                "] has elements that share memory (e.g. an expanded tensor) and cannot be "
                "updated in place");
    check_companion(grads[i], p, "grads", i);
    // With grad_scale the kernels write the unscaled gradient back, as torch's fused SGD does.
    TORCH_CHECK(
        !grad_scale.has_value() || at::has_internal_overlap(grads[i]) != at::MemOverlap::Yes,
        "torchext.fused_sgd_: grads[", i,
        "] has elements that share memory and cannot be unscaled in place");
    if (!momentum_buffers.empty()) {
      check_companion(momentum_buffers[i], p, "momentum_buffers", i);
      TORCH_CHECK(at::has_internal_overlap(momentum_buffers[i]) != at::MemOverlap::Yes,
                  "torchext.fused_sgd_: momentum_buffers[", i,
                  "] has elements that share memory and cannot be updated in place");
    }
  }

  if (lr != nullptr) {
    TORCH_CHECK(lr->defined(), "torchext.fused_sgd_: lr is an undefined tensor");
    TORCH_CHECK(lr->numel() == 1,
                "torchext.fused_sgd_: a tensor lr must have exactly one "
                "element, got shape ",
                lr->sizes());
    TORCH_CHECK(lr->scalar_type() == at::kFloat || lr->scalar_type() == at::kDouble,
                "torchext.fused_sgd_: a tensor lr must be float32 or float64, got ",
                lr->scalar_type());
    TORCH_CHECK(lr->device() == device || lr->device().is_cpu(), "torchext.fused_sgd_: lr is on ",
                lr->device(), " but the params are on ", device,
                "; put lr on the params' device or on the CPU");
  }
  check_scalar_tensor(grad_scale, "grad_scale", device);
  check_scalar_tensor(found_inf, "found_inf", device);
}

}  // namespace torchext::fused_sgd
