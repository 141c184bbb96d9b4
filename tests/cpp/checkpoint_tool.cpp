// torchext_checkpoint_tool: continues a training run from a checkpoint, in C++.
//
//   torchext_checkpoint_tool <data.pt> <checkpoint_in> <steps> <checkpoint_out>
//
// <data.pt> is a torch.save'd dict {"sizes": [int], "activation": str, "loss": str,
// "x": [steps, B, in], "y": [steps, B, out]}; step s trains on x[s], y[s]. The
// model is a torchext::nn::MLP of those sizes, the optimizer a torchext::optim::SGD
// whose hyper-parameters and momentum buffers come from <checkpoint_in> (written
// by Python's torchext.Trainer.save or by this tool). Prints each step's loss
// (%.17g, one per line) and saves the resulting checkpoint to <checkpoint_out>.
#include <torchext/torchext.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s <data.pt> <checkpoint_in> <steps> <checkpoint_out>\n", argv[0]);
    return 2;
  }
  try {
    auto data = torchext::load(argv[1]).toGenericDict();
    std::vector<int64_t> sizes;
    for (const auto& size : data.at("sizes").toListRef()) {
      sizes.push_back(size.toInt());
    }
    const auto x = data.at("x").toTensor();
    const auto y = data.at("y").toTensor();
    torchext::nn::MLP model(
        torchext::nn::MLPOptions(sizes).activation(data.at("activation").toStringRef()));
    model->to(x.scalar_type());
    // The learning rate is a placeholder: the checkpoint's param group replaces it.
    auto optimizer = std::make_shared<torchext::optim::SGD>(model->parameters(),
                                                            torchext::optim::SGDOptions(0.0));
    torchext::Trainer trainer(model, optimizer, data.at("loss").toStringRef());
    trainer.load(argv[2]);
    const int64_t steps = std::stoll(argv[3]);
    for (int64_t s = 0; s < steps; ++s) {
      std::printf("%.17g\n", trainer.step(x[s], y[s]).item<double>());
    }
    trainer.save(argv[4]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "torchext_checkpoint_tool: %s\n", e.what());
    return 1;
  }
  return 0;
}
