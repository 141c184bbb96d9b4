// Several torchext::fused_sgd_ calls made as one: every call is validated as
// its kernel would validate it, then the calls are made in order. A step over
// several parameter groups (or several devices and dtypes) thus changes
// nothing when any of its calls would be refused, at the price of one pass of
// checks rather than one per call made after the others have written.
#pragma once

#include <torchext/ops.h>

#include <ATen/core/Tensor.h>
#include <c10/util/SmallVector.h>

#include <optional>
#include <vector>

namespace torchext {

struct SGDCall {
  std::vector<at::Tensor> params, grads, momentum_buffers;
  c10::SmallVector<bool, 16> is_first_step;
  double lr = 0;
  std::optional<at::Tensor> lr_tensor;  // when set, the lr (tensor_lr overload)
  SGDStepOptions options;
  std::optional<at::Tensor> grad_scale, found_inf;
};

// Raises c10::Error if any call would be refused; writes nothing.
void validate_sgd_calls(const std::vector<SGDCall>& calls);

// The calls in order, as fused_sgd_ makes them (each checks its own arguments
// again, so a call that validate_sgd_calls did not see cannot write garbage).
void run_sgd_calls(const std::vector<SGDCall>& calls);

// validate_sgd_calls, then run_sgd_calls: raises, with nothing written, if any
// call would be refused.
void fused_sgd_calls_(const std::vector<SGDCall>& calls);

}  // namespace torchext
