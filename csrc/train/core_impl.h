// TrainerCore::Impl, shared by the core's entry points (trainer_core.cpp) and its
// loops (fit_loop.cpp).
#pragma once

#include <torchext/trainer_core.h>

#include "train/gradient_reducer.h"
#include "train/mixed_step.h"
#include "train/model.h"
#include "train/update.h"

#include <atomic>
#include <functional>
#include <memory>

namespace torchext {

struct TrainerCore::Impl {
  train::Model model;
  train::Workspace ws;
  Precision precision = Precision::Default;
  std::unique_ptr<train::MixedStep> mixed;  // the step of a mixed precision, else null
  bool reference_kernels = false;
  // Read without the lock by steps() and backend(), so atomic.
  std::atomic<int64_t> steps{0};
  std::atomic<bool> on_cuda{false};
  mutable TrainerLock lock;
  std::unique_ptr<train::GradientReducer> reducer;  // data-parallel only

  bool use_cpu_kernels() const { return model.device.is_cpu() && !reference_kernels; }
  // The ATen path (CUDA, and the CPU reference) checks fit's losses on the device,
  // once per epoch, instead of before every update.
  bool defers_loss_checks() const { return !use_cpu_kernels(); }

  // Re-checks the parameters against the model as validated; if they changed in
  // place, rebuilds the model for them (or raises, naming the problem, with
  // nothing changed).
  void refresh(const char* who);
  // The start of a training call: the trainable parameters, the optimizer's
  // groups, validated. Raises if no parameter requires grad.
  std::vector<SGDGroup> begin_training(OptimizerLink& optimizer, const char* who);
  void forward_backward(const at::Tensor& x, const at::Tensor& y, bool backward);
  // After a backward: the step's loss, data-parallel once the gradients are
  // all-reduced (then the mean of the ranks' losses).
  at::Tensor reduce(const char* who) { return reducer ? reducer->all_reduce(ws, who) : loss(); }
  // Data-parallel: sends the stop to the other ranks waiting in a gradient
  // all-reduce, because this rank leaves its call with an error.
  void stop_others(const char* who) noexcept;
  // Runs a call's `checks`. Data-parallel, the ranks then compare their outcome
  // and `settings` (see data_parallel::agree), so that they start the call
  // together or all raise; a rank whose own checks failed raises its own error.
  void start_call(const char* who, const std::function<void()>& checks,
                  const std::vector<std::pair<std::string, int64_t>>& settings);

  // What the entry points share across the precisions: the workspaces for
  // batches of up to `rows` rows, the last loss (0-dim), the update of a
  // training call, applying one step's update (`skip_if`: see Update::apply),
  // and the forward pass alone.
  void ensure_workspace(int64_t rows);
  const at::Tensor& loss() const { return mixed ? mixed->loss() : ws.loss; }
  train::Update make_update(const std::vector<SGDGroup>& groups) const;
  void apply_update(train::Update& update, OptimizerLink& optimizer,
                    const c10::optional<at::Tensor>& skip_if);
  at::Tensor forward(const at::Tensor& x);
  // (Re)builds the model over `layers` (which core_problem accepted) and the
  // step for it.
  void build(std::vector<DenseLayer> layers, Loss loss);
};

}  // namespace torchext
