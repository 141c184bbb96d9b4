// The training core's SGD update (see update.h).
#include "train/update.h"

#include <c10/util/SmallVector.h>

namespace torchext::train {
namespace {

// The tensors of one group's fused_sgd_ call.
struct GroupCall {
  std::vector<at::Tensor> params, grads, buffers;
  c10::SmallVector<bool, 16> is_first_step;  // bool storage for ArrayRef<bool>, parallel to buffers
};

}  // namespace

bool needs_new_buffers(const Model& model, const std::vector<SGDGroup>& groups) {
  for (const SGDGroup& group : groups) {
    if (group.options.momentum == 0) continue;
    for (size_t j = 0; j < group.params.size(); ++j) {
      if (model.trains(group.params[j]) && !group.momentum_buffers[j].defined()) return true;
    }
  }
  return false;
}

void apply_update(const Model& model, const Workspace& ws, std::vector<SGDGroup>& groups,
                  OptimizerLink& optimizer, const c10::optional<at::Tensor>& skip_if) {
  std::vector<GroupCall> calls(groups.size());
  std::vector<NewMomentumBuffer> created;
  for (size_t g = 0; g < groups.size(); ++g) {
    SGDGroup& group = groups[g];
    GroupCall& call = calls[g];
    for (size_t j = 0; j < group.params.size(); ++j) {
      const int64_t i = group.params[j];
      if (!model.trains(i)) continue;  // frozen: as the stock loop, which sees no gradient
      call.params.push_back(model.params[i]);
      call.grads.push_back(ws.param_grads[i]);
      if (group.options.momentum == 0) continue;
      at::Tensor& buffer = group.momentum_buffers[j];
      call.is_first_step.push_back(!buffer.defined());
      if (!buffer.defined()) {
        buffer = at::empty_like(model.params[i]);  // the op sets it to the gradient
        created.push_back({i, buffer});
      }
      call.buffers.push_back(buffer);
    }
  }
  if (!created.empty()) {
    TORCH_INTERNAL_ASSERT(!skip_if.has_value(), "a skippable update cannot create buffers");
    optimizer.store_new_buffers(created);
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    GroupCall& call = calls[g];
    if (call.params.empty()) continue;
    {
      // Straight to the backend kernel: the dispatcher's boxed ADInplaceOrView
      // step costs more than the update itself at small sizes. Its one job,
      // bumping the version counters of what the step writes, is done below.
      at::AutoDispatchBelowADInplaceOrView direct;
      fused_sgd_(call.params, call.grads, call.buffers, call.is_first_step, groups[g].lr,
                 groups[g].options, c10::nullopt, skip_if);
    }
    for (const at::Tensor& t : call.params) t.unsafeGetTensorImpl()->bump_version();
    for (const at::Tensor& t : call.buffers) t.unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace torchext::train
