// The training-loop core: zero grad → forward → loss → backward → SGD update for
// a chain of dense layers, in one C++ call, without an autograd graph.
//
// A model is a chain of DenseLayers (y = act(x Wᵀ + b)); the core trains the
// caller's weight and bias tensors in place, with gradients and activations in
// workspaces it allocates once per batch size. Hyper-parameters and momentum
// buffers come from the caller at every step (SGDGroup), so a Python or C++
// optimizer object stays the owner of its state. The numbers are those of the
// stock loop `zero_grad(); loss(model(x), y).backward(); SGD.step()`.
#pragma once

#include <torchext/ops.h>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torchext {

enum class Activation { Identity, ReLU, Tanh, Sigmoid, GELU };
enum class Loss { MSE, CrossEntropy };

// "identity", "relu", "tanh", "sigmoid", "gelu" / "mse", "cross_entropy".
Activation activation_from_name(const std::string& name);
Loss loss_from_name(const std::string& name);
std::string activation_name(Activation activation);
std::string loss_name(Loss loss);

struct DenseLayer {
  at::Tensor weight;  // [out_features, in_features], updated in place
  at::Tensor bias;    // [out_features], or undefined for a layer without bias
  Activation activation = Activation::Identity;
};

// One optimizer parameter group: its hyper-parameters and, per parameter, the
// momentum buffer (undefined: the next step creates it, as torch's first step
// does) — held by reference, so the caller's optimizer state is what is updated.
struct SGDGroup {
  double lr = 1e-3;
  SGDStepOptions options;
  std::vector<int64_t> params;              // indices into TrainerCore::parameters()
  std::vector<at::Tensor> momentum_buffers;  // one per entry of params when momentum != 0
};

struct FitOptions {
  int64_t epochs = 1;
  int64_t batch_size = 128;
  bool shuffle = true;
  c10::optional<at::Generator> generator;  // for the shuffling permutation
};

// Called from fit now and then (at most every ~50 ms, and at each epoch's end).
struct FitProgress {
  int64_t epoch;          // 0-based
  int64_t step;           // steps done in this epoch
  int64_t steps_per_epoch;
  double mean_loss;       // sample-weighted mean loss of this epoch so far
};
using ProgressCallback = std::function<void(const FitProgress&)>;

class TrainerCore {
 public:
  TrainerCore(std::vector<DenseLayer> layers, Loss loss);
  ~TrainerCore();
  TrainerCore(TrainerCore&&) noexcept;
  TrainerCore& operator=(TrainerCore&&) noexcept;

  // W0, b0, W1, b1, ... (absent biases skipped): the order SGDGroup::params indexes.
  const std::vector<at::Tensor>& parameters() const;
  const std::vector<DenseLayer>& layers() const;
  Loss loss() const;
  // "cpu" (fused C++ kernels) or "cuda" (ATen kernels, captured as a CUDA graph).
  std::string backend() const;

  // One training step on the batch (x [B, in], y [B, out] for MSE or [B] class
  // indices for cross-entropy). Returns the loss, a 0-dim tensor on the model's
  // device, computed before the update. Momentum buffers created by this step are
  // stored into `groups`. A bad argument raises c10::Error and changes nothing.
  at::Tensor step(const at::Tensor& x, const at::Tensor& y, std::vector<SGDGroup>& groups);

  // Whole epochs: shuffle (torch.randperm with the generator), slice minibatches
  // (the last may be short), step each. Returns the mean loss of each epoch.
  // Stops with an error naming epoch and step if the loss becomes non-finite.
  std::vector<double> fit(const at::Tensor& x, const at::Tensor& y, std::vector<SGDGroup>& groups,
                          const FitOptions& options, const ProgressCallback& progress = {});

  // Mean loss over the data, in batches, without updating anything.
  double evaluate(const at::Tensor& x, const at::Tensor& y, int64_t batch_size);

  // Forward only (inference): the model's output for x [B, in].
  at::Tensor predict(const at::Tensor& x);

  // Run the ATen-operator step (the one CUDA uses) on the CPU too, instead of
  // the fused CPU kernels: a reference for testing and debugging.
  void use_reference_kernels(bool enabled);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace torchext
