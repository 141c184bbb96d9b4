// torchext._C.data_parallel: the collectives of torchext/data_parallel.h for the
// Python Trainer (its eager fallback, checkpoints and the main job), on any
// torch.distributed.ProcessGroup, plus DistributedSampler's shard of an epoch.
//
// A Python ProcessGroup is torch's pybind11 class over c10d::ProcessGroup held
// by c10::intrusive_ptr (torch/csrc/utils/pybind.h declares that holder), so it
// casts to the C++ object directly. Collectives release the GIL while they wait.
#include <torchext/data_parallel.h>

#include "bindings.h"

#include <torch/csrc/utils/pybind.h>

namespace py = pybind11;

torchext::ProcessGroupPtr process_group_from(const py::handle& group, const char* who) {
  try {
    auto ptr = group.cast<torchext::ProcessGroupPtr>();
    if (ptr) return ptr;
  } catch (const py::cast_error&) {
  }
  throw py::type_error(std::string(who) +
                       ": process_group must be a torch.distributed.ProcessGroup (for example "
                       "torch.distributed.group.WORLD), got " +
                       std::string(py::str(py::type::handle_of(group).attr("__name__"))));
}

void bind_data_parallel(py::module_& m) {
  namespace dp = torchext::data_parallel;
  auto sub = m.def_submodule("data_parallel", "collectives over a torch.distributed.ProcessGroup");
  sub.def(
      "replicate_from_rank0",
      [](const py::object& group, const std::vector<at::Tensor>& tensors,
         const std::vector<std::string>& names, const std::vector<std::string>& facts,
         const std::string& who) {
        auto pg = process_group_from(group, who.c_str());
        py::gil_scoped_release no_gil;
        dp::replicate_from_rank0(pg, tensors, names, facts, who.c_str());
      },
      py::arg("group"), py::arg("tensors"), py::arg("names"), py::arg("facts"), py::arg("who"));
  sub.def(
      "agree",
      [](const py::object& group, at::Device device, bool checks_passed,
         const std::vector<std::pair<std::string, int64_t>>& settings, const std::string& who) {
        auto pg = process_group_from(group, who.c_str());
        py::gil_scoped_release no_gil;
        dp::agree(pg, device, checks_passed, settings, who.c_str());
      },
      py::arg("group"), py::arg("device"), py::arg("checks_passed"), py::arg("settings"),
      py::arg("who"));
  sub.def(
      "all_gather_ints",
      [](const py::object& group, const std::vector<int64_t>& values, at::Device device,
         const std::string& who, const std::string& what) {
        auto pg = process_group_from(group, who.c_str());
        py::gil_scoped_release no_gil;
        return dp::all_gather_ints(pg, values, device, who.c_str(), what);
      },
      py::arg("group"), py::arg("values"), py::arg("device"), py::arg("who"), py::arg("what"));
  sub.def(
      "all_reduce_sum_",
      [](const py::object& group, at::Tensor tensor, const std::string& who,
         const std::string& what) {
        auto pg = process_group_from(group, who.c_str());
        py::gil_scoped_release no_gil;
        dp::all_reduce_sum_(pg, tensor, who.c_str(), what);
      },
      py::arg("group"), py::arg("tensor"), py::arg("who"), py::arg("what"));
  sub.def("shard_indices", &dp::shard_indices, py::arg("samples"), py::arg("rank"),
          py::arg("world_size"), py::arg("shuffle"), py::arg("seed"), py::arg("epoch"),
          "DistributedSampler's indices for one rank and epoch (drop_last=False)");
}
