// torchext._C: the Python binding of the C++ core.
//
// The only translation unit that includes Python headers. Importing it loads the
// core, whose static initialisers register every torchext op with the
// dispatcher (torch.ops.torchext.*). It also binds:
//  - `linear`, a hot entry point bound directly: a pybind call converts its
//    arguments several microseconds faster than the generic torch.ops path, which
//    matters for small layers. It still goes through the dispatcher, so autograd
//    and devices behave the same; torch.compile keeps using torch.ops.
//  - `TrainerCore` and `TrainerLock`, the training-loop core behind
//    torchext.Trainer (trainer_binding.cpp).
//  - `data_parallel`, collectives over a torch.distributed.ProcessGroup
//    (data_parallel_binding.cpp).
//  - the CPU kernels' choices, for tests and benchmarks: `cpu_capability` (the
//    ISA build) and `large_gemm` (BLAS or blocked tiles), each with a pin, and
//    `_team_steps`, the steps the core has run on a team of threads.
#include <torchext/ops.h>
#include <torchext/version.h>

#include "bindings.h"
#include "cpu/dispatch.h"
#include "train/cpu_gemm.h"
#include "train/model.h"

#include <torch/csrc/utils/pybind.h>

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
  m.def(
      "linear",
      [](const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
        return torchext::linear(input, weight, bias);
      },
      py::arg("input"), py::arg("weight"), py::arg("bias") = py::none(),
      py::call_guard<py::gil_scoped_release>(), "torch.ops.torchext.linear, bound directly");

  m.def(
      "cpu_capability", [] { return torchext::cpu::isa_name(torchext::cpu::cpu_isa()); },
      "The ISA build of torchext's CPU kernels in use: AVX512, AVX2 or DEFAULT");
  m.def(
      "_set_cpu_capability",
      [](const std::optional<std::string>& name) {
        using torchext::cpu::Isa;
        if (!name.has_value()) return torchext::cpu::reset_cpu_isa();
        for (const Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
          if (*name == torchext::cpu::isa_name(isa)) return torchext::cpu::set_cpu_isa(isa);
        }
        throw py::value_error("unknown CPU capability '" + *name +
                              "'; expected DEFAULT, AVX2, AVX512 or None");
      },
      py::arg("name"),
      "Pins the ISA build of torchext's CPU kernels (tests, benchmarks); None: the default");
  m.def(
      "large_gemm",
      [] {
        using torchext::train::cpu::LargeGemm;
        return torchext::train::cpu::large_gemm() == LargeGemm::kBlas ? "BLAS" : "TILES";
      },
      "The kernel of the training core's large CPU products: BLAS (torch's vendor BLAS) or "
      "TILES (torchext's blocked tiles)");
  m.def(
      "_set_large_gemm",
      [](const std::optional<std::string>& name) {
        using torchext::train::cpu::LargeGemm;
        if (!name.has_value()) return torchext::train::cpu::reset_large_gemm();
        if (*name == "BLAS") return torchext::train::cpu::set_large_gemm(LargeGemm::kBlas);
        if (*name == "TILES") return torchext::train::cpu::set_large_gemm(LargeGemm::kBlockedTiles);
        throw py::value_error("unknown large-GEMM kernel '" + *name +
                              "'; expected BLAS, TILES or None");
      },
      py::arg("name"),
      "Pins the kernel of the training core's large CPU products (tests, benchmarks); None: the "
      "default for this CPU");

  m.def("_team_steps", &torchext::train::cpu_team_steps,
        "The CPU training steps the core has run on a team of threads (csrc/train/team.h) since "
        "it loaded (tests, benchmarks)");

  bind_trainer(m);
  bind_optim(m);
  bind_data_parallel(m);
}
