// Every torchext schema, and the C++ entry points that call them.
//
// Schemas are defined here and only here: Python never defines an op, so a
// LibTorch program that links libtorchext sees exactly the ops Python sees.
// Kernels register themselves per dispatch key in cpu/, cuda/ and autograd/.
#include <torchext/ops.h>
#include <torchext/version.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>
#include <torch/version.h>

namespace torchext {

TORCH_LIBRARY(torchext, m) {
  m.def("linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def(
      "linear_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // grads are mutable: with grad_scale the kernels store the unscaled gradients back,
  // as torch's own _fused_sgd_ does (GradScaler users then see unscaled .grad).
  m.def(
      "fused_sgd_(Tensor(a!)[] params, Tensor(c!)[] grads, Tensor(b!)[] momentum_buffers, "
      "bool[] is_first_step, *, float lr, float momentum, float dampening, float weight_decay, "
      "bool nesterov, bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  m.def(
      "fused_sgd_.tensor_lr(Tensor(a!)[] params, Tensor(c!)[] grads, "
      "Tensor(b!)[] momentum_buffers, bool[] is_first_step, *, Tensor lr, float momentum, "
      "float dampening, float weight_decay, bool nesterov, bool maximize, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
}

// ---------------------------------------------------------------------------
// C++ API: typed calls through the dispatcher (handles are looked up once).

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight,
                  const c10::optional<at::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchext::linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&)>();
  return op.call(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(const at::Tensor& grad_output,
                                                               const at::Tensor& input,
                                                               const at::Tensor& weight,
                                                               std::array<bool, 3> output_mask) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("torchext::linear_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 3>)>();
  return op.call(grad_output, input, weight, output_mask);
}

void fused_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                c10::ArrayRef<bool> is_first_step, double lr, const SGDStepOptions& options,
                const c10::optional<at::Tensor>& grad_scale,
                const c10::optional<at::Tensor>& found_inf) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("torchext::fused_sgd_", "")
          .typed<void(at::TensorList, at::TensorList, at::TensorList, const c10::List<bool>&,
                      double, double, double, double, bool, bool, const c10::optional<at::Tensor>&,
                      const c10::optional<at::Tensor>&)>();
  op.call(params, grads, momentum_buffers, c10::List<bool>(is_first_step), lr, options.momentum,
          options.dampening, options.weight_decay, options.nesterov, options.maximize, grad_scale,
          found_inf);
}

void fused_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                c10::ArrayRef<bool> is_first_step, const at::Tensor& lr,
                const SGDStepOptions& options, const c10::optional<at::Tensor>& grad_scale,
                const c10::optional<at::Tensor>& found_inf) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("torchext::fused_sgd_", "tensor_lr")
          .typed<void(at::TensorList, at::TensorList, at::TensorList, const c10::List<bool>&,
                      const at::Tensor&, double, double, double, bool, bool,
                      const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&)>();
  op.call(params, grads, momentum_buffers, c10::List<bool>(is_first_step), lr, options.momentum,
          options.dampening, options.weight_decay, options.nesterov, options.maximize, grad_scale,
          found_inf);
}

// ---------------------------------------------------------------------------
// Build facts.

std::string version() {
#ifdef TORCHEXT_VERSION
  return TORCHEXT_VERSION;
#else
  return "unknown";
#endif
}

std::string built_with_torch() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

bool built_with_cuda() {
#ifdef TORCHEXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace torchext
