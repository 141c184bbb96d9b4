// Backward of the backward nodes declared in linear_nodes.h, and their
// compiled-autograd hooks (torch._dynamo.compiled_autograd traces apply(),
// whose op calls then land in its graph).
#include "ops/autograd/linear_nodes.h"

#include <torchext/ops.h>

#include <ATen/ATen.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

namespace torchext::autograd {

using torch::autograd::variable_list;

// ---------------------------------------------------------------------------
// LinearBackward0: (gX, gW, gb) = linear_backward(gY, X, W).

variable_list LinearBackward0::apply(variable_list &&grads) {
  const at::Tensor &grad_output = grads[0];
  if (!grad_output.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
  const std::array<bool, 3> mask = {task_should_compute_output(0), task_should_compute_output(1),
                                    has_bias_ && task_should_compute_output(2)};
  if (!mask[0] && !mask[1] && !mask[2]) return {at::Tensor(), at::Tensor(), at::Tensor()};
  auto [grad_input, grad_weight, grad_bias] =
      torchext::linear_backward(grad_output, input_.unpack(), weight_.unpack(), mask);
  return {std::move(grad_input), std::move(grad_weight), std::move(grad_bias)};
}

void LinearBackward0::release_variables() {
  std::lock_guard<std::mutex> lock(mutex_);
  input_.reset_data();
  weight_.reset_data();
}

void LinearBackward0::compiled_args(torch::dynamo::autograd::CompiledNodeArgs &args) const {
  args.collect(input_, false);
  args.collect(weight_, false);
  args.collect(has_bias_);
}

variable_list LinearBackward0::apply_with_saved(
    const variable_list &grads, torch::dynamo::autograd::SwapSavedVariables &saved) {
  saved.before(input_);
  saved.before(weight_);
  variable_list result = apply(variable_list(grads));
  saved.after(input_);
  saved.after(weight_);
  return result;
}

// ---------------------------------------------------------------------------
// LinearBackwardBackward0. Given the gradients flowing into (gX, gW, gb) —
// ggX [*, I], ggW [O, I], ggb [O] — the derivatives of linear_backward are
//   d gY = ggX·Wᵀ + X·ggWᵀ + ggb  = linear(ggX, W) + linear(X, ggW) + ggb
//   d X  = gY·ggW                 = linear(gY, ggWᵀ)
//   d W  = gYᵀ·ggX                = the weight gradient of linear_backward(gY,
//   ggX, W)
// (Calls are qualified: unqualified, argument-dependent lookup would also find
// at::linear and at::linear_backward.)

variable_list LinearBackwardBackward0::apply(variable_list &&grads) {
  const at::Tensor &gg_input = output_mask_[0] ? grads[0] : at::Tensor();
  const at::Tensor &gg_weight = output_mask_[1] ? grads[1] : at::Tensor();
  const at::Tensor &gg_bias = output_mask_[2] ? grads[2] : at::Tensor();
  const at::Tensor grad_output = grad_output_.unpack();
  const at::Tensor input = input_.unpack();
  const at::Tensor weight = weight_.unpack();

  at::Tensor d_grad_output, d_input, d_weight;
  if (task_should_compute_output(0)) {
    if (gg_input.defined()) d_grad_output = torchext::linear(gg_input, weight);
    if (gg_weight.defined()) {
      at::Tensor term = torchext::linear(input, gg_weight);
      d_grad_output = d_grad_output.defined() ? d_grad_output + term : term;
    }
    if (gg_bias.defined()) {
      d_grad_output = d_grad_output.defined() ? d_grad_output + gg_bias
                                              : gg_bias.expand(grad_output.sizes()).clone();
    }
  }
  if (task_should_compute_output(1) && gg_weight.defined()) {
    d_input = torchext::linear(grad_output, gg_weight.t());
  }
  if (task_should_compute_output(2) && gg_input.defined()) {
    d_weight =
        std::get<1>(torchext::linear_backward(grad_output, gg_input, weight, {false, true, false}));
  }
  return {d_grad_output, d_input, d_weight};
}

void LinearBackwardBackward0::release_variables() {
  std::lock_guard<std::mutex> lock(mutex_);
  grad_output_.reset_data();
  input_.reset_data();
  weight_.reset_data();
}

void LinearBackwardBackward0::compiled_args(torch::dynamo::autograd::CompiledNodeArgs &args) const {
  args.collect(grad_output_, false);
  args.collect(input_, false);
  args.collect(weight_, false);
  for (bool m : output_mask_) args.collect(m);
}

variable_list LinearBackwardBackward0::apply_with_saved(
    const variable_list &grads, torch::dynamo::autograd::SwapSavedVariables &saved) {
  saved.before(grad_output_);
  saved.before(input_);
  saved.before(weight_);
  variable_list result = apply(variable_list(grads));
  saved.after(grad_output_);
  saved.after(input_);
  saved.after(weight_);
  return result;
}

}  // namespace torchext::autograd
