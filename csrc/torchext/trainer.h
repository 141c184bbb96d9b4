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
#pragma once

#include <torchext/nn.h>
#include <torchext/optim.h>
#include <torchext/trainer_core.h>

#include <ATen/core/ivalue.h>

#include <memory>
#include <string>
#include <vector>

namespace torchext {

class Trainer {
 public:
  // `loss`: "mse" or "cross_entropy" (class-index targets). The optimizer must
  // own every trainable parameter of the model. `precision`: "" (the model's own
  // dtype), "bf16-mixed" or "16-mixed" (which uses `scaler`'s settings; its
  // state tensors are made on the model's device when undefined).
  Trainer(nn::MLP model, std::shared_ptr<optim::SGD> optimizer, const std::string& loss = "mse",
          const std::string& precision = "", LossScaler scaler = {});
  // Uses `optimizer` without owning it: it must outlive the Trainer.
  Trainer(nn::MLP model, optim::SGD& optimizer, const std::string& loss = "mse",
          const std::string& precision = "", LossScaler scaler = {});
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

 private:
  class OptimizerAdapter;
  void check_model_unchanged(const char* who) const;
  c10::IValue current_state() const;  // state_dict() without taking the lock

  nn::MLP model_;
  std::shared_ptr<optim::SGD> optimizer_;
  std::shared_ptr<LossScaler> scaler_;  // 16-mixed only; shared with the adapter
  TrainerCore core_;
  std::unique_ptr<OptimizerAdapter> adapter_;
};

}  // namespace torchext
