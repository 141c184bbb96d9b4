// The training-loop core: zero grad → forward → loss → backward → SGD update for
// a chain of dense layers, in one C++ call, without an autograd graph.
//
// A model is a chain of DenseLayers (y = act(x Wᵀ + b)); the core trains the
// caller's weight and bias tensors in place, with gradients and activations in
// workspaces it allocates once per batch size. The numbers are those of the
// stock loop `zero_grad(); loss(model(x), y).backward(); SGD.step()`.
//
// State flows one way. Parameters are the caller's tensors, re-checked at every
// call: a parameter changed in place since the last call (another shape, dtype
// or device, say after `model.to(torch::kDouble)`) makes the core rebuild itself
// for the model as it is now, or refuse with an error naming the problem; one
// whose requires_grad is off is frozen (neither it nor its momentum buffer is
// touched, as in the stock loop). Hyper-parameters and momentum buffers belong to
// the optimizer: the core reads them through an OptimizerLink at every call and
// stores each new momentum buffer there right before the update that first
// writes it. steps() counts the updates applied. So after any exception — a bad
// argument, a non-finite loss in fit, an error thrown by a callback — parameters,
// optimizer state and steps() agree with the updates actually applied.
//
// Calls on one core are serialised by its TrainerLock (see trainer_lock.h).
//
// A core built with a mixed precision (see mixed_precision.h) trains a float32
// model with the Linear layers in bfloat16 or float16, as the stock loop under
// torch.autocast (and torch.amp.GradScaler for float16) does.
//
// Data-parallel: built with DataParallelOptions, the core is one replica of the
// model on one rank of a c10d process group. Construction makes every rank hold
// rank 0's parameters (after checking that the replicas match); each step
// all-reduces the gradients (their mean over the ranks, as
// DistributedDataParallel) before the update, so every rank applies the same
// update; fit trains each rank on its DistributedSampler shard; evaluate returns
// the mean over the whole dataset. Every call is then a collective: each rank
// must make it (see torchext/data_parallel.h for how failures are reported).
#pragma once

#include <torchext/activation_loss.h>
#include <torchext/data_parallel.h>
#include <torchext/mixed_precision.h>
#include <torchext/ops.h>
#include <torchext/trainer_lock.h>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torchext {

struct DenseLayer {
  at::Tensor weight;  // [out_features, in_features], updated in place
  at::Tensor bias;    // [out_features], or undefined for a layer without bias
  Activation activation = Activation::Identity;
};

// One optimizer parameter group as read at the start of a call: its
// hyper-parameters and, per parameter, the momentum buffer (undefined: none yet).
struct SGDGroup {
  double lr = 1e-3;
  SGDStepOptions options;
  std::vector<int64_t> params;               // indices into TrainerCore::parameters()
  std::vector<at::Tensor> momentum_buffers;  // one per entry of params when momentum != 0
};

// A momentum buffer the core creates for the first update of parameter `param`.
struct NewMomentumBuffer {
  int64_t param;  // index into TrainerCore::parameters()
  at::Tensor buffer;
};

// The optimizer behind a call: where the core reads hyper-parameters and momentum
// buffers, and stores the buffers it creates. The core calls it only while it
// holds its lock, so what it reads, the updates it applies and the buffers it
// stores form one unit even when several threads use one trainer.
class OptimizerLink {
 public:
  virtual ~OptimizerLink() = default;
  // Every parameter group; at the start of each step, and once per fit.
  virtual std::vector<SGDGroup> read_groups() = 0;
  // Stores `buffers` in the optimizer's state. Called right before the update
  // that first writes them, after every check that could stop that update, so
  // the state never holds a buffer without its update. If it throws, it must
  // have stored none of them; the core then applies nothing.
  virtual void store_new_buffers(const std::vector<NewMomentumBuffer>& buffers) = 0;
  // The loss scaler of a "16-mixed" core, read at the start of each step and
  // once per fit (see LossScaler). The default raises: only links of float16
  // trainers need one.
  virtual LossScaler read_loss_scaler();
};

struct FitOptions {
  int64_t epochs = 1;
  int64_t batch_size = 128;
  bool shuffle = true;
  c10::optional<at::Generator> generator;  // for the shuffling permutation
  // Instead of `generator` (and always when data-parallel, where it defaults to
  // 0): each epoch's order is DistributedSampler's with this seed, after
  // set_epoch(start_epoch + the epoch's index in this call).
  c10::optional<int64_t> seed;
  int64_t start_epoch = 0;
  // Called after every step, once its update is applied and counted. Throw from
  // it to stop fit (the Python binding raises KeyboardInterrupt here on Ctrl-C).
  std::function<void()> interruption_point;
};

// Called from fit now and then (at most every ~50 ms, and at each epoch's end).
struct FitProgress {
  int64_t epoch;  // 0-based
  int64_t step;   // steps done in this epoch
  int64_t steps_per_epoch;
  double mean_loss;  // sample-weighted mean loss of this epoch so far (NaN: not known yet)
};
using ProgressCallback = std::function<void(const FitProgress&)>;

// One replica per rank of `group` (see the top of this file).
struct DataParallelOptions {
  ProcessGroupPtr group;
  // Per parameter (W0, b0, W1, ...), its name in error messages; default "layer 0 weight", ...
  std::vector<std::string> parameter_names;
};

class TrainerCore {
 public:
  // `precision`: Default trains in the parameters' dtype; BF16Mixed and FP16Mixed
  // need float32 parameters (the master weights).
  TrainerCore(std::vector<DenseLayer> layers, Loss loss, Precision precision = Precision::Default);
  // Data-parallel: a collective (every rank builds its replica at once), in the
  // parameters' dtype.
  TrainerCore(std::vector<DenseLayer> layers, Loss loss, const DataParallelOptions& data_parallel);
  ~TrainerCore();
  TrainerCore(TrainerCore&&) noexcept;
  TrainerCore& operator=(TrainerCore&&) noexcept;

  // W0, b0, W1, b1, ... (absent biases skipped): the order SGDGroup::params indexes.
  const std::vector<at::Tensor>& parameters() const;
  Loss loss() const;
  Precision precision() const;
  // How a mixed precision computes: "emulated" (CPU, small models: float32
  // kernels on values rounded to the compute dtype), "aten" (compute-dtype ATen
  // operators: CUDA, the CPU reference, larger CPU models); "" for Default.
  std::string mixed_kernels() const;
  // "cpu" (fused C++ kernels) or "cuda" (ATen kernels).
  std::string backend() const;
  // Updates applied by step and fit (plus the count set by set_steps).
  int64_t steps() const;
  // For checkpoints; call it while holding lock() for Write (it does not lock).
  void set_steps(int64_t steps);
  TrainerLock& lock() const;
  // The process group (null unless data-parallel), this rank in it (0), and its size (1).
  ProcessGroupPtr process_group() const;
  int rank() const;
  int world_size() const;

  // One training step on the batch (x [B, in], y [B, out] for MSE or [B] class
  // indices for cross-entropy). Returns the loss, a 0-dim tensor on the model's
  // device, computed before the update, which is applied as in the stock loop
  // even when the loss is not finite. A bad argument raises c10::Error and
  // changes nothing.
  at::Tensor step(const at::Tensor& x, const at::Tensor& y, OptimizerLink& optimizer);

  // Whole epochs: shuffle (torch.randperm with the generator), slice minibatches
  // (the last may be short), step each. Returns the mean loss of each epoch.
  // Data-parallel, each rank passes the whole dataset and trains on its shard of
  // each epoch (see FitOptions::seed); the losses are means over every rank's
  // samples.
  // A non-finite loss stops training with an error naming epoch and step, and the
  // model keeps the weights from before that step: on the CPU the check runs
  // before each update; on CUDA, without a host synchronisation, once per epoch,
  // and the updates after the first non-finite loss are skipped on the device.
  std::vector<double> fit(const at::Tensor& x, const at::Tensor& y, OptimizerLink& optimizer,
                          const FitOptions& options, const ProgressCallback& progress = {});

  // Mean loss over the data, in batches (batch_size 0: one batch), without
  // updating anything. `interruption_point` runs after every batch.
  // Data-parallel, each rank passes the whole dataset and evaluates a
  // contiguous 1/world_size of it; the result is the mean over all of it.
  double evaluate(const at::Tensor& x, const at::Tensor& y, int64_t batch_size,
                  const std::function<void()>& interruption_point = {});

  // Forward only (inference): the model's output for x [B, in]; in a mixed
  // precision it is in the compute dtype, as the stock model's under autocast.
  at::Tensor predict(const at::Tensor& x);

  // Run the ATen-operator path (the one CUDA uses, with its once-per-epoch loss
  // check) on the CPU too, instead of the fused CPU kernels: a reference for
  // testing and debugging.
  void use_reference_kernels(bool enabled);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace torchext
