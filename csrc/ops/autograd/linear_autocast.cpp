// Autocast kernels of torchext::linear (AutocastCPU, AutocastCUDA).
//
// autograd/ holds the dispatch-key layers that sit above the backends; autocast
// is one of them (it runs before autograd, so the casts are recorded in the
// graph). torchext::linear follows aten::linear's policy: under
// torch.autocast, floating-point arguments other than float64 are cast to the
// autocast dtype (cached for leaf weights, as torch caches them) and the op
// runs in it. ATen's own wrapper applies the policy, so the cast rules are
// exactly torch's. linear_backward and fused_sgd_ fall through: backward runs
// in the dtypes the forward chose, as for ATen's ops.
#include <torchext/ops.h>

#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace torchext {
namespace {

using LinearSignature = decltype(torchext::linear);

template <c10::DeviceType device_type>
using LowerPrecisionLinear =
    at::autocast::WrapFunction<at::autocast::CastPolicy::lower_precision_fp, device_type,
                               LinearSignature, LinearSignature, &torchext::linear>;

}  // namespace

TORCH_LIBRARY_IMPL(torchext, AutocastCPU, m) {
  m.impl("linear", &LowerPrecisionLinear<c10::DeviceType::CPU>::type::call);
}

TORCH_LIBRARY_IMPL(torchext, AutocastCUDA, m) {
  m.impl("linear", &LowerPrecisionLinear<c10::DeviceType::CUDA>::type::call);
}

}  // namespace torchext
