// torchext::optim::SGD: torch::optim::SGD's interface on the fused torchext step.
//
// A torch::optim::Optimizer, constructed like torch::optim::SGD
// (`SGD(params, SGDOptions(1e-2).momentum(0.9))`), so param groups, zero_grad,
// LR schedulers (torch::optim::StepLR, ...) and torch::save/torch::load of the
// optimizer work as for LibTorch's own. The numbers are those of torch.optim.SGD
// (and of torch::optim::SGD, which has no `maximize`): per parameter,
// maximize → g += weight_decay·p → first step buf = clone(g), later
// buf = momentum·buf + (1−dampening)·g → nesterov g += momentum·buf, else g = buf
// → p −= lr·g. step() makes one torchext::fused_sgd_ call per (device, dtype)
// bucket of each parameter group.
//
// Groups added with their own SGDOptions use those options as given (LibTorch's
// per-field inheritance from the defaults covers only its built-in optimizers).
#pragma once

#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <utility>
#include <vector>

namespace torchext::optim {

struct SGDOptions : public torch::optim::OptimizerCloneableOptions<SGDOptions> {
  SGDOptions(double lr);  // NOLINT(google-explicit-constructor): as torch::optim::SGDOptions
  TORCH_ARG(double, lr);
  TORCH_ARG(double, momentum) = 0;
  TORCH_ARG(double, dampening) = 0;
  TORCH_ARG(double, weight_decay) = 0;
  TORCH_ARG(bool, nesterov) = false;
  TORCH_ARG(bool, maximize) = false;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
  friend bool operator==(const SGDOptions& lhs, const SGDOptions& rhs);
};

// Raises c10::Error with torch.optim.SGD's message for a bad hyper-parameter.
void check_options(const SGDOptions& options);

struct SGDParamState : public torch::optim::OptimizerCloneableParamState<SGDParamState> {
  TORCH_ARG(torch::Tensor, momentum_buffer);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

class SGD : public torch::optim::Optimizer {
 public:
  explicit SGD(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
               SGDOptions defaults);
  explicit SGD(std::vector<torch::Tensor> params, SGDOptions defaults)
      : SGD({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

  // One step over every parameter that has a gradient; returns the closure's loss
  // (undefined without a closure). Bad options or gradients raise c10::Error
  // before any parameter or buffer changes.
  torch::Tensor step(LossClosure closure = nullptr) override;

  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  // The momentum buffer of `param` (undefined before its first momentum step).
  torch::Tensor momentum_buffer(const torch::Tensor& param) const;
  // Sets (or, with an undefined tensor, drops) the momentum buffer of `param`.
  void set_momentum_buffer(const torch::Tensor& param, torch::Tensor buffer);
};

}  // namespace torchext::optim
