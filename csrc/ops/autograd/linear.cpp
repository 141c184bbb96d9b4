// Autograd kernels of torchext::linear and torchext::linear_backward, in C++.
//
// Registered under the Autograd key, so LibTorch programs get gradients too.
// Each kernel runs the op below autograd, then records history the way
// PyTorch's generated kernels do: a named backward node (linear_nodes.h) for
// reverse mode, and a tangent for forward mode (torch.autograd.forward_ad,
// torch.func.jvp/jacfwd), both computed with torchext's own ops so that every
// order of derivative stays differentiable. Tangents are formed from the
// inputs' primals (`_fw_primal`), as in PyTorch's kernels: a tangent must not
// itself carry a tangent of the same level.
#include "ops/autograd/linear_nodes.h"

#include <torchext/ops.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <type_traits>

namespace torchext {
namespace {

using torch::autograd::SavedVariable;

// Forward-mode AD has one level in eager mode (0); functorch maps its own
// levels onto it per wrapper, as it does for PyTorch's kernels.
constexpr uint64_t kForwardLevel = 0;

// A node owned the way this torch's autograd graph owns nodes (an intrusive
// pointer in recent releases, a shared pointer in older ones).
template <typename T>
auto make_node() {
  using NodePtr = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return std::shared_ptr<T>(new T());
  } else {
    return c10::make_intrusive<T>();
  }
}

at::Tensor tangent_of(const at::Tensor &t) {
  return t.defined() ? t._fw_grad(kForwardLevel) : at::Tensor();
}

at::Tensor primal_of(const at::Tensor &t) {
  return tangent_of(t).defined() ? t._fw_primal(kForwardLevel) : t;
}

c10::optional<at::Tensor> optional(const at::Tensor &t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// a + b where either may be undefined (an undefined tangent is a zero one).
at::Tensor sum_defined(const at::Tensor &a, const at::Tensor &b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

// ---------------------------------------------------------------------------
// linear: y = X Wᵀ + b.

// dy = dX Wᵀ + X dWᵀ + db.
at::Tensor linear_tangent(const at::Tensor &input, const at::Tensor &weight, const at::Tensor &bias,
                          const at::Tensor &output) {
  const at::Tensor d_input = tangent_of(input), d_weight = tangent_of(weight);
  const at::Tensor d_bias = tangent_of(bias);
  at::Tensor tangent;
  if (d_input.defined()) {
    tangent = torchext::linear(d_input, primal_of(weight), optional(d_bias));
  }
  if (d_weight.defined()) {
    const at::Tensor term = torchext::linear(primal_of(input), d_weight,
                                             tangent.defined() ? c10::nullopt : optional(d_bias));
    tangent = sum_defined(tangent, term);
  }
  if (!tangent.defined()) tangent = d_bias.expand(output.sizes()).clone();
  return tangent;
}

at::Tensor linear_autograd(const at::Tensor &input, const at::Tensor &weight,
                           const c10::optional<at::Tensor> &bias) {
  const at::Tensor bias_or_undefined = bias.has_value() ? *bias : at::Tensor();
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = torchext::linear(input, weight, bias);
  }
  if (torch::autograd::compute_requires_grad(input, weight, bias_or_undefined)) {
    auto node = make_node<autograd::LinearBackward0>();
    node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias_or_undefined));
    node->input_ = SavedVariable(input, /*is_output=*/false);
    node->weight_ = SavedVariable(weight, /*is_output=*/false);
    node->has_bias_ = bias_or_undefined.defined();
    torch::autograd::set_history(output, node);
  }
  if (tangent_of(input).defined() || tangent_of(weight).defined() ||
      tangent_of(bias_or_undefined).defined()) {
    output._set_fw_grad(linear_tangent(input, weight, bias_or_undefined, output), kForwardLevel,
                        /*is_inplace_op=*/false);
  }
  return output;
}

// ---------------------------------------------------------------------------
// linear_backward: (gX, gW, gb) = (gY·W, gYᵀ·X, Σ gY), each a product that is
// linear in each of its two factors, so its tangent is a sum of
// linear_backward calls with one factor replaced by its tangent.

std::array<at::Tensor, 3> linear_backward_tangents(const at::Tensor &grad_output,
                                                   const at::Tensor &input,
                                                   const at::Tensor &weight,
                                                   std::array<bool, 3> mask) {
  const at::Tensor d_grad_output = tangent_of(grad_output), d_input = tangent_of(input);
  const at::Tensor d_weight = tangent_of(weight);
  const at::Tensor go = primal_of(grad_output), x = primal_of(input), w = primal_of(weight);
  std::array<at::Tensor, 3> tangents;
  auto add = [&](const std::tuple<at::Tensor, at::Tensor, at::Tensor> &terms) {
    tangents[0] = sum_defined(tangents[0], std::get<0>(terms));
    tangents[1] = sum_defined(tangents[1], std::get<1>(terms));
    tangents[2] = sum_defined(tangents[2], std::get<2>(terms));
  };
  if (d_grad_output.defined()) add(torchext::linear_backward(d_grad_output, x, w, mask));
  if (d_input.defined() && mask[1])
    add(torchext::linear_backward(go, d_input, w, {false, true, false}));
  if (d_weight.defined() && mask[0])
    add(torchext::linear_backward(go, x, d_weight, {true, false, false}));
  return tangents;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_autograd(
    const at::Tensor &grad_output, const at::Tensor &input, const at::Tensor &weight,
    std::array<bool, 3> output_mask) {
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    grads = torchext::linear_backward(grad_output, input, weight, output_mask);
  }
  auto &[grad_input, grad_weight, grad_bias] = grads;
  if (torch::autograd::compute_requires_grad(grad_output, input, weight)) {
    auto node = make_node<autograd::LinearBackwardBackward0>();
    node->set_next_edges(torch::autograd::collect_next_edges(grad_output, input, weight));
    node->grad_output_ = SavedVariable(grad_output, /*is_output=*/false);
    node->input_ = SavedVariable(input, /*is_output=*/false);
    node->weight_ = SavedVariable(weight, /*is_output=*/false);
    node->output_mask_ = output_mask;
    torch::autograd::set_history({grad_input, grad_weight, grad_bias}, node);
  }
  if (tangent_of(grad_output).defined() || tangent_of(input).defined() ||
      tangent_of(weight).defined()) {
    auto tangents = linear_backward_tangents(grad_output, input, weight, output_mask);
    at::Tensor *outputs[3] = {&grad_input, &grad_weight, &grad_bias};
    for (size_t k = 0; k < 3; ++k) {
      if (outputs[k]->defined() && tangents[k].defined()) {
        outputs[k]->_set_fw_grad(tangents[k], kForwardLevel,
                                 /*is_inplace_op=*/false);
      }
    }
  }
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, Autograd, m) {
  m.impl("linear", &linear_autograd);
  m.impl("linear_backward", &linear_backward_autograd);
}

}  // namespace torchext
