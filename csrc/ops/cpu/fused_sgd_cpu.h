// The CPU kernel of torchext::fused_sgd_ (fused_sgd.cpp) for callers inside the
// library that have already validated what the op checks: the training core,
// whose model, workspace and optimizer-group checks (train/validation.h) cover
// every check of fused_sgd::check_args. On a small model the dispatcher's call
// and those checks cost more than the update itself.
#pragma once

#include <torchext/ops.h>

#include <ATen/core/Tensor.h>

namespace torchext {

// fused_sgd_ on CPU tensors, without grad_scale or found_inf, skipping the
// dispatcher (so it bumps no version counter: the caller does) and the op's
// checks except that each grad and buffer still matches its param.
void fused_sgd_cpu_validated(at::TensorList params, at::TensorList grads,
                             at::TensorList momentum_buffers, c10::ArrayRef<bool> is_first_step,
                             double lr, const SGDStepOptions& options);

}  // namespace torchext
