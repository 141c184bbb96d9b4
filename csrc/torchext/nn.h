// torchext::nn: Linear and MLP as LibTorch modules (torch::nn::Module, module holders).
//
// They mirror torch::nn::Linear: the same constructor forms, public members
// (`weight`, `bias`, `options`), parameter names and initialisation stream (the
// same seed gives bit-identical parameters), so a LibTorch program can swap one
// for the other. forward() calls torchext::linear, whose autograd formula is
// registered in C++, so backward() works as usual.
//
// MLP registers its layers under the names Python's torchext.nn.MLP (an
// nn.Sequential with activations at odd indices) gives them: "0", "2", "4", ...
// ("0", "1", "2", ... without activations), so state dicts have the same keys.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace torchext::nn {

// ---------------------------------------------------------------------------
// Linear: y = x Wᵀ + b.

struct LinearOptions {
  LinearOptions(int64_t in_features, int64_t out_features);
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
};

class LinearImpl : public torch::nn::Cloneable<LinearImpl> {
 public:
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const LinearOptions& options_);

  // (Re)creates weight and bias and initialises them (Cloneable's contract).
  void reset() override;
  // kaiming_uniform_(weight, a=√5); bias ~ U(−1/√fan_in, 1/√fan_in): torch's init.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // input [*, in_features] or [in_features] -> [*, out_features].
  torch::Tensor forward(const torch::Tensor& input);

  LinearOptions options;
  torch::Tensor weight;  // [out_features, in_features]
  torch::Tensor bias;    // [out_features], undefined when options.bias() is false
};
TORCH_MODULE(Linear);

// ---------------------------------------------------------------------------
// MLP: Linear layers with one activation between consecutive layers (none after
// the last).

struct MLPOptions {
  // Feature sizes, input first: at least two entries.
  MLPOptions(std::vector<int64_t> sizes);  // NOLINT(google-explicit-constructor)
  TORCH_ARG(std::vector<int64_t>, sizes);
  // "relu", "tanh", "sigmoid", "gelu" (exact, erf) or "identity".
  TORCH_ARG(std::string, activation) = "relu";
  TORCH_ARG(bool, bias) = true;
};

class MLPImpl : public torch::nn::Cloneable<MLPImpl> {
 public:
  explicit MLPImpl(const MLPOptions& options_);

  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor forward(torch::Tensor input);

  // The Linear layers, input side first.
  const std::vector<Linear>& layers() const { return layers_; }

  MLPOptions options;

 private:
  std::vector<Linear> layers_;
};
TORCH_MODULE(MLP);

}  // namespace torchext::nn
