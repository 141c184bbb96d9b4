// torchext_test_plugin: a library with operators of its own, built on libtorchext.
//
// What a user's C++ extension looks like when it is linked to torchext::torchext and
// loaded into Python with torch.ops.load_library next to torchext._C:
// tests/test_cpp_interop.py checks that the process then holds one libtorchext (so the
// torchext operators are registered once) and that both libraries' operators work.
//
//   torchext_test_plugin::linear_relu(Tensor input, Tensor weight, Tensor? bias) -> Tensor
//       relu(torchext::linear(input, weight, bias)), through the dispatcher.
#include <torchext/ops.h>

#include <ATen/ops/relu.h>
#include <torch/library.h>

namespace {

at::Tensor linear_relu(const at::Tensor& input, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias) {
  return at::relu(torchext::linear(input, weight, bias));
}

}  // namespace

TORCH_LIBRARY(torchext_test_plugin, m) {
  m.def("linear_relu(Tensor input, Tensor weight, Tensor? bias) -> Tensor", &linear_relu);
}
