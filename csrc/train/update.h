// The SGD update of the training core: one fused_sgd_ call per optimizer group,
// over its trainable parameters and their gradients in the workspace.
#pragma once

#include "train/model.h"

#include <c10/util/Optional.h>

namespace torchext::train {

// Whether the next update creates a momentum buffer: a trainable parameter of a
// group with momentum has none yet.
bool needs_new_buffers(const Model& model, const std::vector<SGDGroup>& groups);

// Applies one update. Momentum buffers the update creates are stored through
// `optimizer` first (and into `groups`, for the next steps of the same call);
// then every group is stepped. Frozen parameters and their buffers are not
// touched. `skip_if` (one float32 element on the model's device; non-zero:
// nothing is written) lets the CUDA path skip an update without a host
// synchronisation; it must be absent when the update creates buffers, since a
// created buffer must be written.
void apply_update(const Model& model, const Workspace& ws, std::vector<SGDGroup>& groups,
                  OptimizerLink& optimizer, const c10::optional<at::Tensor>& skip_if);

}  // namespace torchext::train
