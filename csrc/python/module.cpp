// torchext._C: the Python binding of the C++ core.
//
// The only translation unit that includes Python headers. Importing it loads the
// core, whose static initialisers register every torchext op with the
// dispatcher (torch.ops.torchext.*). It also binds:
//  - `linear`, a hot entry point bound directly: a pybind call converts its
//    arguments several microseconds faster than the generic torch.ops path, which
//    matters for small layers. It still goes through the dispatcher, so autograd
//    and devices behave the same; torch.compile keeps using torch.ops.
//  - `TrainerCore`, the training-loop core behind torchext.Trainer. Optimizer
//    state crosses as plain tuples (see torchext/trainer.py), and the GIL is
//    released while the core runs.
#include <torchext/ops.h>
#include <torchext/trainer_core.h>
#include <torchext/version.h>

#include "bindings.h"

#include <torch/csrc/utils/pybind.h>

#include <tuple>
#include <vector>

namespace py = pybind11;

namespace {

// (lr, momentum, dampening, weight_decay, nesterov, maximize, [param index], [buffer or None])
using GroupSpec = std::tuple<double, double, double, double, bool, bool, std::vector<int64_t>,
                             std::vector<c10::optional<at::Tensor>>>;

std::vector<torchext::SGDGroup> to_groups(const std::vector<GroupSpec>& specs) {
  std::vector<torchext::SGDGroup> groups;
  for (const auto& [lr, momentum, dampening, weight_decay, nesterov, maximize, params, buffers] :
       specs) {
    torchext::SGDGroup group;
    group.lr = lr;
    group.options = {momentum, dampening, weight_decay, nesterov, maximize};
    group.params = params;
    for (const auto& buf : buffers) group.momentum_buffers.push_back(buf.value_or(at::Tensor()));
    groups.push_back(std::move(group));
  }
  return groups;
}

// The buffers a step created, as (group, position, tensor), for the caller to
// store in its optimizer's state.
using Created = std::vector<std::tuple<size_t, size_t, at::Tensor>>;

Created created_buffers(const std::vector<GroupSpec>& specs,
                        const std::vector<torchext::SGDGroup>& groups) {
  Created created;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& before = std::get<7>(specs[g]);
    const auto& after = groups[g].momentum_buffers;
    for (size_t j = 0; j < after.size(); ++j) {
      const bool existed = j < before.size() && before[j].has_value();
      if (!existed && after[j].defined()) created.emplace_back(g, j, after[j]);
    }
  }
  return created;
}

torchext::TrainerCore make_core(const std::vector<at::Tensor>& weights,
                                const std::vector<c10::optional<at::Tensor>>& biases,
                                const std::vector<std::string>& activations,
                                const std::string& loss) {
  TORCH_CHECK(weights.size() == biases.size() && weights.size() == activations.size(),
              "TrainerCore: weights, biases and activations must have one entry per layer");
  std::vector<torchext::DenseLayer> layers;
  for (size_t l = 0; l < weights.size(); ++l) {
    layers.push_back({weights[l], biases[l].value_or(at::Tensor()),
                      torchext::activation_from_name(activations[l])});
  }
  return torchext::TrainerCore(std::move(layers), torchext::loss_from_name(loss));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchext C++ core";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = torchext::version();
    info["torch_version"] = torchext::built_with_torch();
    info["cuda"] = torchext::built_with_cuda();
    return info;
  });
  m.def(
      "linear",
      [](const at::Tensor& input, const at::Tensor& weight,
         const c10::optional<at::Tensor>& bias) { return torchext::linear(input, weight, bias); },
      py::arg("input"), py::arg("weight"), py::arg("bias") = py::none(),
      py::call_guard<py::gil_scoped_release>(), "torch.ops.torchext.linear, bound directly");

  py::class_<torchext::TrainerCore>(m, "TrainerCore")
      .def(py::init(&make_core), py::arg("weights"), py::arg("biases"), py::arg("activations"),
           py::arg("loss"))
      .def_property_readonly("backend", &torchext::TrainerCore::backend)
      .def("step",
           [](torchext::TrainerCore& core, const at::Tensor& x, const at::Tensor& y,
              const std::vector<GroupSpec>& specs) {
             auto groups = to_groups(specs);
             at::Tensor loss;
             {
               py::gil_scoped_release no_gil;
               loss = core.step(x, y, groups);
             }
             return std::make_tuple(loss, created_buffers(specs, groups));
           })
      .def("fit",
           [](torchext::TrainerCore& core, const at::Tensor& x, const at::Tensor& y,
              const std::vector<GroupSpec>& specs, int64_t epochs, int64_t batch_size,
              bool shuffle, c10::optional<at::Generator> generator, py::object progress) {
             auto groups = to_groups(specs);
             torchext::FitOptions options{epochs, batch_size, shuffle, generator};
             torchext::ProgressCallback callback;
             if (!progress.is_none()) {
               callback = [progress](const torchext::FitProgress& p) {
                 py::gil_scoped_acquire gil;
                 progress(p.epoch, p.step, p.steps_per_epoch, p.mean_loss);
               };
             }
             std::vector<double> losses;
             {
               py::gil_scoped_release no_gil;
               losses = core.fit(x, y, groups, options, callback);
             }
             return std::make_tuple(losses, created_buffers(specs, groups));
           })
      .def("evaluate", &torchext::TrainerCore::evaluate, py::arg("x"), py::arg("y"),
           py::arg("batch_size"), py::call_guard<py::gil_scoped_release>())
      .def("predict", &torchext::TrainerCore::predict, py::arg("x"),
           py::call_guard<py::gil_scoped_release>())
      .def("use_reference_kernels", &torchext::TrainerCore::use_reference_kernels,
           py::arg("enabled"));
  bind_optim(m);
}
