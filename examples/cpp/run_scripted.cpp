// Runs a TorchScript model saved in Python, whose code calls torchext's operators, from C++.
//
//   run_scripted <model.pt> <input.pt> <output.pt>
//
// <model.pt> comes from torch.jit.script(model).save(path) in Python, for a model whose
// scripted code calls torch.ops.torchext.*: torch::jit::load resolves those calls to the
// operators that libtorchext registers in this process. <input.pt> holds one tensor
// (torch.save in Python); the model's output is written to <output.pt> in torch.save's
// format, so Python reads it back with torch.load(path).
#include <torchext/torchext.h>

#include <torch/script.h>

#include <cstdio>
#include <exception>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s <model.pt> <input.pt> <output.pt>\n", argv[0]);
    return 2;
  }
  try {
    // Naming a torchext function keeps libtorchext linked, and with it its operators.
    std::printf("torchext %s\n", torchext::version().c_str());
    torch::jit::Module model = torch::jit::load(argv[1]);
    model.eval();
    const at::Tensor input = torchext::load(argv[2]).toTensor();
    torch::NoGradGuard no_grad;
    const at::Tensor output = model.forward({input}).toTensor();
    torchext::save(output, argv[3]);
    std::printf("input %s -> output %s written to %s\n", c10::str(input.sizes()).c_str(),
                c10::str(output.sizes()).c_str(), argv[3]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run_scripted: %s\n", e.what());
    return 1;
  }
  return 0;
}
