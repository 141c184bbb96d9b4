// Backward nodes of torchext::linear and torchext::linear_backward.
//
// Written like the nodes PyTorch generates for its own ops (AddmmBackward0,
// ...) rather than as torch::autograd::Function: the graph holds a named node
// ("LinearBackward0", as torch names its nodes), and torch.func transforms
// accept it (they refuse torch::autograd::Function, whose context they cannot
// lift). Backward calls the ops again through the dispatcher, so derivatives of
// any order, vmap and every functorch level go through torchext's kernels.
//
// Legend: X input [*, I], W weight [O, I], gY grad_output [*, O];
// linear_backward(gY, X, W) = (gX = gY·W, gW = gYᵀ·X, gb = Σ gY).
#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <array>
#include <string>

namespace torchext::autograd {

// Node of y = linear(X, W, b); its next edges are (X, W, b).
struct LinearBackward0 : public torch::autograd::TraceableFunction {
  torch::autograd::variable_list apply(torch::autograd::variable_list &&grads) override;
  std::string name() const override { return "LinearBackward0"; }
  void release_variables() override;
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs &args) const override;
  torch::autograd::variable_list apply_with_saved(
      const torch::autograd::variable_list &grads,
      torch::dynamo::autograd::SwapSavedVariables &saved) override;

  torch::autograd::SavedVariable input_;
  torch::autograd::SavedVariable weight_;
  bool has_bias_ = false;
};

// Node of (gX, gW, gb) = linear_backward(gY, X, W, mask); next edges (gY, X,
// W). Outputs left out by the mask are undefined and receive no gradient.
struct LinearBackwardBackward0 : public torch::autograd::TraceableFunction {
  torch::autograd::variable_list apply(torch::autograd::variable_list &&grads) override;
  std::string name() const override { return "LinearBackwardBackward0"; }
  void release_variables() override;
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs &args) const override;
  torch::autograd::variable_list apply_with_saved(
      const torch::autograd::variable_list &grads,
      torch::dynamo::autograd::SwapSavedVariables &saved) override;

  torch::autograd::SavedVariable grad_output_;
  torch::autograd::SavedVariable input_;
  torch::autograd::SavedVariable weight_;
  std::array<bool, 3> output_mask_ = {false, false, false};
};

}  // namespace torchext::autograd
