// torchext._C: the Python binding of the C++ core.
//
// The only translation unit that includes Python headers. Importing it loads the
// core, whose static initialisers register every torchext op with the
// dispatcher; the ops themselves are reached through torch.ops.torchext.
#include <torchext/version.h>

#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchext C++ core";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = torchext::version();
    info["torch_version"] = torchext::built_with_torch();
    info["cuda"] = torchext::built_with_cuda();
    return info;
  });
}
