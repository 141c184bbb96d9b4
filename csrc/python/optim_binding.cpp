// Direct bindings of torchext::fused_sgd_ for torchext.optim.SGD.
//
// torch.ops.torchext.fused_sgd_ parses its arguments against the schema in
// Python-facing generic code, which costs several microseconds per call: as
// much as the whole step of a small network. These bindings convert the
// arguments with pybind11's fixed casters and call the same dispatcher entry
// (torchext::fused_sgd_ in registration.cpp), so devices, version counters and
// error messages are those of the op. torchext/optim.py uses them only where no
// Python-level dispatch has to see the call (not under torch.compile, no tensor
// subclass or __torch_function__ mode); everywhere else it calls torch.ops.
#include "bindings.h"

#include <torchext/ops.h>

#include <c10/util/SmallVector.h>

#include <optional>
#include <vector>

namespace py = pybind11;

namespace {

using torchext::SGDStepOptions;

// The options struct of the C++ API from the op's keyword arguments.
SGDStepOptions options(double momentum, double dampening, double weight_decay, bool nesterov,
                       bool maximize) {
  SGDStepOptions o;
  o.momentum = momentum;
  o.dampening = dampening;
  o.weight_decay = weight_decay;
  o.nesterov = nesterov;
  o.maximize = maximize;
  return o;
}

// ArrayRef<bool> needs contiguous bools, which std::vector<bool> does not hold.
using Flags = c10::SmallVector<bool, 64>;

Flags flags(const std::vector<bool>& v) { return Flags(v.begin(), v.end()); }

// The op with lr as a float (Lr = double) or a one-element tensor (Lr = at::Tensor).
template <typename Lr>
void fused_sgd_direct(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                      const std::vector<at::Tensor>& momentum_buffers,
                      const std::vector<bool>& is_first_step, const Lr& lr, double momentum,
                      double dampening, double weight_decay, bool nesterov, bool maximize,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf) {
  const Flags first = flags(is_first_step);
  torchext::fused_sgd_(params, grads, momentum_buffers, first, lr,
                       options(momentum, dampening, weight_decay, nesterov, maximize), grad_scale,
                       found_inf);
}

template <typename Lr>
void def_fused_sgd(py::module_& m, const char* name, const char* doc) {
  m.def(name, &fused_sgd_direct<Lr>, py::arg("params"), py::arg("grads"),
        py::arg("momentum_buffers"), py::arg("is_first_step"), py::arg("lr"), py::arg("momentum"),
        py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"),
        py::arg("grad_scale"), py::arg("found_inf"), py::call_guard<py::gil_scoped_release>(), doc);
}

}  // namespace

void bind_optim(py::module_& m) {
  def_fused_sgd<double>(m, "fused_sgd_",
                        "torch.ops.torchext.fused_sgd_ (float lr), bound directly; positional "
                        "arguments");
  def_fused_sgd<at::Tensor>(m, "fused_sgd_tensor_lr_",
                            "torch.ops.torchext.fused_sgd_.tensor_lr, bound directly; positional "
                            "arguments");
}
