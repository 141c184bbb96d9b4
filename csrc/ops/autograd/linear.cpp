// Autograd for torchext::linear and torchext::linear_backward, in C++.
//
// Registered under the Autograd key so LibTorch programs get gradients too.
// linear's backward calls the linear_backward op, and linear_backward's own
// backward is written with linear and linear_backward again, so derivatives of
// any order (gradgradcheck, create_graph=True) go through torchext's kernels.
//
// Legend: X input [*, I], W weight [O, I], gY grad_output [*, O];
// linear_backward(gY, X, W) = (gX = gY·W, gW = gYᵀ·X, gb = Σ gY).
#include <torchext/ops.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace torchext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
    // The bias is saved only so backward knows whether there is one (an
    // undefined tensor otherwise); cheaper than a saved_data entry.
    ctx->save_for_backward({input, weight, bias.has_value() ? *bias : at::Tensor()});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return torchext::linear(input, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = grads[0];
    if (!grad_output.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    // Without a bias the node has no third input to ask about.
    const bool has_bias = saved[2].defined();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    auto [grad_input, grad_weight, grad_bias] =
        torchext::linear_backward(grad_output, saved[0], saved[1], mask);
    return {std::move(grad_input), std::move(grad_weight), std::move(grad_bias)};
  }
};

// Derivatives of (gX, gW, gb) = linear_backward(gY, X, W), given their incoming
// gradients (ggX [*, I], ggW [O, I], ggb [O]):
//   d gY = ggX·Wᵀ + X·ggWᵀ + ggb  = linear(ggX, W) + linear(X, ggW) + ggb
//   d X  = gY·ggW                 = linear(gY, ggWᵀ)
//   d W  = gYᵀ·ggX                = the weight gradient of linear_backward(gY, ggX, W)
// (Calls are qualified: unqualified, argument-dependent lookup would also find
// at::linear and at::linear_backward.)
class LinearBackwardFunction : public torch::autograd::Function<LinearBackwardFunction> {
 public:
  // Returns only the gradients output_mask asks for: autograd cannot attach
  // history to undefined outputs, so the masked-out ones are left out here and
  // restored as undefined tensors by linear_backward_autograd.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, const at::Tensor& weight,
                               std::array<bool, 3> output_mask) {
    ctx->save_for_backward({grad_output, input, weight});
    ctx->saved_data["output_mask"] = c10::List<bool>({output_mask[0], output_mask[1], output_mask[2]});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] =
        torchext::linear_backward(grad_output, input, weight, output_mask);
    variable_list outputs;
    for (at::Tensor* grad : {&grad_input, &grad_weight, &grad_bias}) {
      if (grad->defined()) outputs.push_back(std::move(*grad));
    }
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& input = saved[1];
    const at::Tensor& weight = saved[2];
    // Spread the incoming gradients back over (input, weight, bias) slots.
    const c10::List<bool> output_mask = ctx->saved_data["output_mask"].toBoolList();
    std::array<at::Tensor, 3> incoming;
    for (size_t slot = 0, next = 0; slot < 3; ++slot) {
      if (output_mask[slot]) incoming[slot] = grads[next++];
    }
    const at::Tensor& gg_input = incoming[0];
    const at::Tensor& gg_weight = incoming[1];
    const at::Tensor& gg_bias = incoming[2];

    at::Tensor d_grad_output, d_input, d_weight;
    if (ctx->needs_input_grad(0)) {
      if (gg_input.defined()) d_grad_output = torchext::linear(gg_input, weight);
      if (gg_weight.defined()) {
        at::Tensor term = torchext::linear(input, gg_weight);
        d_grad_output = d_grad_output.defined() ? d_grad_output + term : term;
      }
      if (gg_bias.defined()) {
        d_grad_output = d_grad_output.defined()
                            ? d_grad_output + gg_bias
                            : gg_bias.expand(grad_output.sizes()).clone();
      }
    }
    if (ctx->needs_input_grad(1) && gg_weight.defined()) {
      d_input = torchext::linear(grad_output, gg_weight.t());
    }
    if (ctx->needs_input_grad(2) && gg_input.defined()) {
      d_weight = std::get<1>(
          torchext::linear_backward(grad_output, gg_input, weight, {false, true, false}));
    }
    return {d_grad_output, d_input, d_weight, at::Tensor()};
  }
};

bool any_requires_grad(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias) {
  const at::Tensor& bias_or_undefined = bias.has_value() ? *bias : at::Tensor();
  // Function::apply builds a graph node even when none is needed; skip it
  // under no_grad or when nothing requires grad (inference, the optimizer).
  if (!at::GradMode::is_enabled() || !any_requires_grad({&input, &weight, &bias_or_undefined})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return torchext::linear(input, weight, bias);
  }
  return LinearFunction::apply(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  if (!at::GradMode::is_enabled() || !any_requires_grad({&grad_output, &input, &weight})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return torchext::linear_backward(grad_output, input, weight, output_mask);
  }
  variable_list computed = LinearBackwardFunction::apply(grad_output, input, weight, output_mask);
  std::array<at::Tensor, 3> grads;
  for (size_t slot = 0, next = 0; slot < 3; ++slot) {
    if (output_mask[slot]) grads[slot] = std::move(computed[next++]);
  }
  return {grads[0], grads[1], grads[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("linear", &linear_autograd);
  m.impl("linear_backward", &linear_backward_autograd);
}

}  // namespace torchext
