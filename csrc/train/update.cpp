// The training core's SGD update (see update.h).
#include "train/update.h"

#include "ops/cpu/fused_sgd_cpu.h"

namespace torchext::train {

Update::Update(const Model& model, const Workspace& ws, const std::vector<SGDGroup>& groups)
    : Update(model, ws.param_grads, groups) {}

Update::Update(const Model& model, const std::vector<at::Tensor>& grads,
               const std::vector<SGDGroup>& groups) {
  for (const SGDGroup& group : groups) {
    GroupCall call{group.lr, group.options, {}, {}, {}, {}};
    for (size_t j = 0; j < group.params.size(); ++j) {
      const int64_t i = group.params[j];
      if (!model.trains(i)) continue;  // frozen: as the stock loop, which sees no gradient
      call.params.push_back(model.params[i]);
      call.grads.push_back(grads[i]);
      if (group.options.momentum == 0) continue;
      at::Tensor buffer = group.momentum_buffers[j];
      call.is_first_step.push_back(!buffer.defined());
      if (!buffer.defined()) {
        buffer = at::empty_like(model.params[i]);  // the op sets it to the gradient
        created_.push_back({i, buffer});
      }
      call.buffers.push_back(std::move(buffer));
    }
    if (!call.params.empty()) calls_.push_back(std::move(call));
  }
}

void Update::apply(OptimizerLink& optimizer, const c10::optional<at::Tensor>& skip_if) {
  TORCH_INTERNAL_ASSERT(created_.empty() || !skip_if.has_value(),
                        "a skippable update cannot create buffers");
  apply(optimizer, [&skip_if](const GroupCall& call) {
    if (!skip_if.has_value() && call.params.front().is_cpu()) {
      // The core validated every tensor of the call (see fused_sgd_cpu.h).
      fused_sgd_cpu_validated(call.params, call.grads, call.buffers, call.is_first_step, call.lr,
                              call.options);
    } else {
      fused_sgd_(call.params, call.grads, call.buffers, call.is_first_step, call.lr, call.options,
                 c10::nullopt, skip_if);
    }
  });
}

void Update::apply(OptimizerLink& optimizer, const StepFn& step) {
  if (!created_.empty()) optimizer.store_new_buffers(created_);
  for (GroupCall& call : calls_) {
    {
      // Straight to the backend kernel: the dispatcher's boxed ADInplaceOrView
      // step costs more than the update itself at small sizes. Its one job,
      // bumping the version counters of what the step writes, is done below.
      at::AutoDispatchBelowADInplaceOrView direct;
      step(call);
    }
    for (const at::Tensor& t : call.params) t.unsafeGetTensorImpl()->bump_version();
    for (const at::Tensor& t : call.buffers) t.unsafeGetTensorImpl()->bump_version();
  }
  if (!created_.empty()) {
    // Written now: every later update of this call is an ordinary momentum step.
    created_.clear();
    for (GroupCall& call : calls_)
      std::fill(call.is_first_step.begin(), call.is_first_step.end(), false);
  }
}

}  // namespace torchext::train
