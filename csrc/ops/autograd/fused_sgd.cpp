// ADInplaceOrView kernel of torchext::fused_sgd_ (both overloads): bumps the
// version counters of the tensors the step writes, then runs the backend kernel.
//
// torch.optim.SGD's in-place ops (param.add_, buf.mul_) bump versions even under
// no_grad, so autograd refuses a backward through tensors an optimizer step has
// since overwritten. A custom op gets no such bookkeeping for free; without this
// kernel a step between forward and backward would silently corrupt gradients.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <vector>

namespace torchext {
namespace {

void fused_sgd_bump_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                             torch::jit::Stack* stack) {
  const c10::FunctionSchema& schema = op.schema();
  const auto args = torch::jit::last(*stack, schema.arguments().size());
  // Written: params and momentum buffers always, grads only when unscaled in place.
  const bool scaled = !args[*schema.argumentIndexWithName("grad_scale")].isNone();
  std::vector<at::Tensor> written;
  for (const char* name : {"params", "momentum_buffers", "grads"}) {
    if (std::string_view(name) == "grads" && !scaled) continue;
    for (const at::Tensor& t : args[*schema.argumentIndexWithName(name)].toTensorList()) {
      written.push_back(t);
    }
  }
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  for (const at::Tensor& t : written) {
    t.unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(torchext, ADInplaceOrView, m) {
  m.impl("fused_sgd_", torch::CppFunction::makeFromBoxedFunction<&fused_sgd_bump_versions>());
  m.impl("fused_sgd_.tensor_lr",
         torch::CppFunction::makeFromBoxedFunction<&fused_sgd_bump_versions>());
}

}  // namespace torchext
