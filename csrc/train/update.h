// The SGD update of the training core: one fused_sgd_ call per optimizer group,
// over its trainable parameters and their gradients in the workspace.
#pragma once

#include "train/model.h"

#include <c10/util/Optional.h>
#include <c10/util/SmallVector.h>

#include <functional>

namespace torchext::train {

// The update of one call (a step, or every step of a fit): the tensor lists of
// each group's fused_sgd_ call, built once. Frozen parameters are left out, so
// neither they nor their momentum buffers are touched. The workspace's gradient
// tensors must stay the same for the Update's life.
class Update {
 public:
  // The fused_sgd_ arguments of one group.
  struct GroupCall {
    double lr;
    SGDStepOptions options;
    std::vector<at::Tensor> params, grads, buffers;
    c10::SmallVector<bool, 16> is_first_step;  // bool storage for ArrayRef<bool>, one per buffer
  };
  // Runs one group's step in place of fused_sgd_ (the mixed-precision update,
  // whose gradients are in another dtype than the parameters).
  using StepFn = std::function<void(const GroupCall&)>;

  // Creates (but does not yet store) the momentum buffers the first update needs.
  Update(const Model& model, const Workspace& ws, const std::vector<SGDGroup>& groups);
  // The same over `grads` (one per Model::params) instead of the workspace's.
  Update(const Model& model, const std::vector<at::Tensor>& grads,
         const std::vector<SGDGroup>& groups);

  // Whether the next apply creates momentum buffers (a trainable parameter of a
  // group with momentum has none yet).
  bool creates_buffers() const { return !created_.empty(); }

  // Applies one update. Buffers it creates are stored through `optimizer` first;
  // if that throws, nothing is applied. `skip_if` (one float32 element on the
  // model's device; non-zero: nothing is written) lets the CUDA path skip an
  // update without a host synchronisation; it must be absent when buffers are
  // created, since a created buffer must be written.
  void apply(OptimizerLink& optimizer, const c10::optional<at::Tensor>& skip_if);
  // The same with `step` in place of fused_sgd_, never skipped.
  void apply(OptimizerLink& optimizer, const StepFn& step);

 private:
  std::vector<GroupCall> calls_;
  std::vector<NewMomentumBuffer> created_;
};

}  // namespace torchext::train
