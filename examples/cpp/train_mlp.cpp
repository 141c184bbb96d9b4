// Trains the walk-through's network (20 → 30 → 30 → 40, ReLU) with torchext from C++.
//
//   train_mlp [checkpoint path, default mlp_checkpoint.pt]
//
// Synthetic regression data (a fixed random linear map plus noise), SGD with
// momentum 0.9 and a StepLR schedule, a few epochs of torchext::Trainer::fit;
// prints the loss of each epoch and saves a checkpoint that Python's
// torch.load(path) reads ({"model", "optimizer", "step", "torchext_version"}).
#include <torchext/torchext.h>

#include <torch/torch.h>

#include <cstdio>
#include <memory>
#include <string>

int main(int argc, char** argv) {
  const std::string checkpoint = argc > 1 ? argv[1] : "mlp_checkpoint.pt";
  torch::manual_seed(0);

  // Data: 1024 samples of y = x·A + noise.
  const auto x = torch::randn({1024, 20});
  const auto y = x.matmul(torch::randn({20, 40}) / 4.5) + 0.1 * torch::randn({1024, 40});

  torchext::nn::MLP model(torchext::nn::MLPOptions({20, 30, 30, 40}).activation("relu"));
  auto optimizer = std::make_shared<torchext::optim::SGD>(
      model->parameters(), torchext::optim::SGDOptions(1e-2).momentum(0.9));
  torch::optim::StepLR scheduler(*optimizer, /*step_size=*/3, /*gamma=*/0.5);
  torchext::Trainer trainer(model, optimizer, "mse");

  torchext::FitOptions options;
  options.epochs = 1;
  options.batch_size = 128;
  for (int epoch = 0; epoch < 6; ++epoch) {
    const double loss = trainer.fit(x, y, options).front();
    std::printf("epoch %d  lr %.4g  loss %.6f\n", epoch,
                optimizer->param_groups()[0].options().get_lr(), loss);
    scheduler.step();
  }
  std::printf("evaluation loss %.6f after %lld steps\n", trainer.evaluate(x, y),
              static_cast<long long>(trainer.steps()));
  trainer.save(checkpoint);
  std::printf("checkpoint written to %s\n", checkpoint.c_str());
  return 0;
}
