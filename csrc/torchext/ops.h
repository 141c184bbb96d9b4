// torchext operators, callable from C++.
//
// Each function goes through the PyTorch dispatcher (the schemas live in
// csrc/ops/registration.cpp), so autograd, device dispatch and tracing behave
// exactly as for a call made from Python as torch.ops.torchext.<name>.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace torchext {

// y = x Wᵀ + b over any number of leading dims of x (or a 1-D x).
//   input  [*, I]   weight [O, I]   bias [O] or undefined   ->   [*, O]
at::Tensor linear(const at::Tensor& input, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& bias = c10::nullopt);

// Gradients of linear with respect to (input, weight, bias). Entries whose
// output_mask is false come back undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(const at::Tensor& grad_output,
                                                               const at::Tensor& input,
                                                               const at::Tensor& weight,
                                                               std::array<bool, 3> output_mask);

// Hyper-parameters of one SGD step, in torch.optim.SGD's terms.
struct SGDStepOptions {
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
  bool maximize = false;
};

// One SGD(-with-momentum) step over many tensors, in place, in torch.optim.SGD's
// order of operations. `momentum_buffers` is empty when momentum == 0, otherwise
// one per parameter; `is_first_step[i]` says buffer i is new and is set to the
// gradient (no dampening). `grad_scale` (gradients are divided by it, and the
// unscaled gradients are stored back into `grads`, as torch's fused SGD does) and
// `found_inf` (non-zero: nothing is written) serve mixed-precision training.
void fused_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                c10::ArrayRef<bool> is_first_step, double lr, const SGDStepOptions& options,
                const c10::optional<at::Tensor>& grad_scale = c10::nullopt,
                const c10::optional<at::Tensor>& found_inf = c10::nullopt);

// The same step with the learning rate held in a one-element tensor, read where
// it lives (no host synchronisation, so the step can be captured in a CUDA graph).
void fused_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                c10::ArrayRef<bool> is_first_step, const at::Tensor& lr,
                const SGDStepOptions& options,
                const c10::optional<at::Tensor>& grad_scale = c10::nullopt,
                const c10::optional<at::Tensor>& found_inf = c10::nullopt);

}  // namespace torchext
