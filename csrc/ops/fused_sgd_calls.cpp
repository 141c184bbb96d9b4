// Several fused_sgd_ calls made as one (see fused_sgd_calls.h).
#include "ops/fused_sgd_calls.h"

#include "ops/cpu/fused_sgd_reduced.h"
#include "ops/fused_sgd_checks.h"

#include <algorithm>

namespace torchext {
namespace {

// What the call's kernel refuses before writing: its arguments, and on the CPU
// the float16/bfloat16 conversions of the scalars (fused_sgd_reduced.h).
void validate(const SGDCall& call) {
  const at::Tensor* lr = call.lr_tensor.has_value() ? &*call.lr_tensor : nullptr;
  const at::DeviceType device =
      call.params.empty() ? at::kCPU : call.params.front().device().type();
  fused_sgd::check_args(call.params, call.grads, call.momentum_buffers, call.is_first_step.size(),
                        call.options.momentum, lr, call.grad_scale, call.found_inf, device);
  if (device != at::kCPU) return;
  for (const at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    const bool holds = std::any_of(call.params.begin(), call.params.end(),
                                   [&](const at::Tensor& p) { return p.scalar_type() == dtype; });
    if (!holds) continue;
    const SGDStepOptions& o = call.options;
    fused_sgd::reduced_coeffs(
        dtype, {lr != nullptr ? lr->item<double>() : call.lr, o.momentum, o.dampening,
                o.weight_decay, o.nesterov, o.maximize, call.grad_scale.has_value(), 1.0f});
  }
}

}  // namespace

void validate_sgd_calls(const std::vector<SGDCall>& calls) {
  for (const SGDCall& call : calls) validate(call);
}

void run_sgd_calls(const std::vector<SGDCall>& calls) {
  for (const SGDCall& call : calls) {
    if (call.lr_tensor.has_value()) {
      fused_sgd_(call.params, call.grads, call.momentum_buffers, call.is_first_step,
                 *call.lr_tensor, call.options, call.grad_scale, call.found_inf);
    } else {
      fused_sgd_(call.params, call.grads, call.momentum_buffers, call.is_first_step, call.lr,
                 call.options, call.grad_scale, call.found_inf);
    }
  }
}

void fused_sgd_calls_(const std::vector<SGDCall>& calls) {
  validate_sgd_calls(calls);
  run_sgd_calls(calls);
}

}  // namespace torchext
