// The fused CPU update of the mixed-precision step's ATen path (see
// mixed_step.h): float32 master weights stepped from bfloat16/float16 gradients
// without a float32 copy of all the gradients.
#pragma once

#include "train/update.h"

#include <vector>

namespace torchext::train::mixed {

// Whether any element of the (bfloat16 or float16, contiguous CPU) tensors is
// inf or NaN: GradScaler's check, before any update of the step.
bool any_non_finite(const std::vector<at::Tensor>& tensors);

// One group's SGD step, `call.grads` in the compute dtype: the step of fused_sgd_
// on each parameter's float32 gradient g · inv_scale (GradScaler.unscale_'s
// multiply; 1: none), bit for bit, but chunk by chunk: each chunk of a gradient
// is widened into float32 scratch that stays in cache and stepped at once, so
// memory sees each gradient read once in its own dtype. Chunks are shared with
// torch's inter-op threads.
void sgd_from_compute_grads(const Update::GroupCall& call, float inv_scale);

}  // namespace torchext::train::mixed
