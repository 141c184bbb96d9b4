// torchext::Trainer: the whole training step of an MLP in one C++ call.
//
// Trainer(model, optimizer, loss) runs zero-grad → forward → loss → backward →
// SGD update on TrainerCore (fused kernels, no autograd graph), training the
// model's own parameters in place. Hyper-parameters are read from the
// optimizer's param groups at every call and momentum buffers live in the
// optimizer's state (created there right before the update that first writes
// them), so LR schedulers work and a hand-written LibTorch loop
// (`optimizer.zero_grad(); loss.backward(); optimizer.step();`) can take over at
// any step with the same numbers. Parameters are re-checked at every call: a
// parameter replaced since construction is an error; one changed in place
// (`model->to(torch::kDouble)`) is picked up; one with requires_grad off is
// frozen, as in the stock loop.
//
// Calls on one Trainer are serialised (see trainer_lock.h): from a second thread
// they wait. After any exception the model, the optimizer state and steps()
// agree with the updates applied.
//
// A precision ("bf16-mixed", "16-mixed") trains the float32 model in mixed
// precision, as the Python Trainer's `precision=` (see torchext/mixed_precision.h);
// a "16-mixed" trainer scales the loss with its LossScaler (scaler()).
//
// Checkpoints are the Python Trainer's: a torch.save file holding the plain dict
// {"model": state dict, "optimizer": torch.optim.SGD state dict, "step": int,
// "torchext_version": str, "checksum": "sha1:..."} (and "scaler":
// torch.amp.GradScaler's state dict, for "16-mixed"), readable and writable from
// either language; load verifies the checksum (see torchext/serialize.h).
//
// Data-parallel (TrainerOptions::process_group, a c10d::ProcessGroup such as
// one over c10d::ProcessGroupGloo or ProcessGroupNCCL): each process holds one
// replica, and the Trainer behaves as the core does (see trainer_core.h): rank
// 0's parameters at construction, gradients averaged over the ranks at every
// step, DistributedSampler shards in fit, global means from fit and evaluate.
// save writes on rank 0 while the others wait; load reads on every rank and
// applies only when every rank read the same checkpoint. Every call is then a
// collective that each rank makes.
#pragma once

#include <torchext/data_parallel.h>
#include <torchext/nn.h>
#include <torchext/optim.h>
#include <torchext/trainer_core.h>

#include <ATen/core/ivalue.h>
#include <torch/arg.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torchext {

struct TrainerOptions {
  // "mse" or "cross_entropy" (class-index targets).
  TORCH_ARG(std::string, loss) = "mse";
  // Data-parallel: the process group this replica trains in (null: one process).
  TORCH_ARG(ProcessGroupPtr, process_group);
  // "" (the model's own dtype), "bf16-mixed" or "16-mixed" (see
  // torchext/mixed_precision.h); not with a process group.
  TORCH_ARG(std::string, precision) = "";
  // "16-mixed": the loss scaler's settings (and state, when its tensors are
  // defined; otherwise they are made on the model's device).
  TORCH_ARG(LossScaler, scaler);
};

class Trainer {
 public:
  // `loss`: "mse" or "cross_entropy" (class-index targets). The optimizer must
  // own every trainable parameter of the model. A precision is set through
  // TrainerOptions.
  Trainer(nn::MLP model, std::shared_ptr<optim::SGD> optimizer, const std::string& loss = "mse");
  Trainer(nn::MLP model, std::shared_ptr<optim::SGD> optimizer, const TrainerOptions& options);
  // Uses `optimizer` without owning it: it must outlive the Trainer.
  Trainer(nn::MLP model, optim::SGD& optimizer, const std::string& loss = "mse");
  Trainer(nn::MLP model, optim::SGD& optimizer, const TrainerOptions& options);
  ~Trainer();
  Trainer(Trainer&&) noexcept;
  Trainer& operator=(Trainer&&) noexcept;

  // One training step on the batch; returns the loss before the update (0-dim).
  at::Tensor step(const at::Tensor& x, const at::Tensor& y);

  // Whole epochs (shuffled with options.generator); returns each epoch's mean loss.
  std::vector<double> fit(const at::Tensor& x, const at::Tensor& y,
                          const FitOptions& options = FitOptions(),
                          const ProgressCallback& progress = {});

  // Mean loss over the data without training (batch_size 0: one batch).
  double evaluate(const at::Tensor& x, const at::Tensor& y, int64_t batch_size = 0);

  // The model's output, without autograd (in a mixed precision, in its compute dtype).
  at::Tensor predict(const at::Tensor& x);

  // {"model", "optimizer", "step", "torchext_version"} (and "scaler"), as the
  // Python Trainer.
  c10::IValue state_dict() const;
  // Restores model, optimizer, step count and (16-mixed) the loss scaler.
  // Everything is checked first (keys, every tensor's shape, dtype and device,
  // the optimizer's groups, the step count, the scaler's state): on a bad state
  // nothing changes.
  void load_state_dict(const c10::IValue& state);
  // state_dict() with its checksum, written with torchext::save_checkpoint.
  void save(const std::string& path) const;
  // Loads a checkpoint written by this class or by Python's torchext.Trainer.save,
  // verifying its checksum when it has one.
  void load(const std::string& path);

  nn::MLP& model() { return model_; }
  optim::SGD& optimizer() { return *optimizer_; }
  int64_t steps() const { return core_.steps(); }
  // "", "bf16-mixed" or "16-mixed".
  std::string precision() const { return precision_name(core_.precision()); }
  // The loss scaler of a "16-mixed" trainer (its settings may be changed
  // between calls); raises for other precisions.
  LossScaler& scaler();
  // "cpu" (fused C++ kernels) or "cuda".
  std::string backend() const { return core_.backend(); }
  // Data-parallel: this process's rank and the number of ranks (0 and 1 otherwise).
  int rank() const { return core_.rank(); }
  int world_size() const { return core_.world_size(); }

 private:
  class OptimizerAdapter;
  // Checks the state `read_state` gives (data-parallel: on every rank, then all
  // compare it), then loads it; on any failure nothing changes.
  void load_checked(const std::function<c10::IValue()>& read_state, const char* who);
  void check_model_unchanged(const char* who) const;
  c10::IValue current_state() const;  // state_dict() without taking the lock

  nn::MLP model_;
  std::shared_ptr<optim::SGD> optimizer_;
  std::shared_ptr<LossScaler> scaler_;  // 16-mixed only; shared with the adapter
  TrainerCore core_;
  std::unique_ptr<OptimizerAdapter> adapter_;
};

}  // namespace torchext
